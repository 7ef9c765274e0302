"""What every entry point shares: settings from the command line, checked output paths,
WAV writing."""

from __future__ import annotations

import shlex
from argparse import Namespace
from pathlib import Path

import numpy as np

from pgesam_live.errors import PgesamError
from pgesam_live.settings import Settings


def settings_from_args(ns: Namespace) -> Settings:
    """Defaults < environment < command line."""
    s = Settings.from_env()
    return s.replace(
        model=getattr(ns, "model", None),
        device=getattr(ns, "device", None),
        audio=getattr(ns, "audio", None),
        osc_host=getattr(ns, "osc_host", None),
        osc_port=getattr(ns, "osc_port", None),
        midi=getattr(ns, "midi", None),
        web=False if getattr(ns, "no_web", False) else None,
        web_host=getattr(ns, "web_host", None),
        web_port=getattr(ns, "web_port", None),
        sample_rate=getattr(ns, "sample_rate", None),
        lookahead_s=getattr(ns, "lookahead", None),
    )


def check_out_path(out: str, suffixes: tuple[str, ...]) -> Path:
    """An output file the command can write: not a folder, a known kind by its suffix
    (checked before any work is done)."""
    p = Path(out).expanduser()
    if p.is_dir() or out.endswith(("/", "\\")):
        raise PgesamError(f"--out {out} is a folder: give a file name, e.g. "
                          f"{p / ('out' + suffixes[0])}")
    if p.suffix.lower() not in suffixes:
        raise PgesamError(f"--out {out}: this writes {' or '.join(suffixes)} files; name it "
                          f"{p.with_suffix(suffixes[0]).name}")
    if p.parent.exists() and not p.parent.is_dir():
        raise PgesamError(f"--out {out}: {p.parent} is not a folder")
    _probe_writable(p, out)
    return p


def _probe_writable(p: Path, out: str) -> None:
    """Fail now, not after the work, where `p` cannot be written."""
    from pgesam_live.model.paths import write_problem  # noqa: PLC0415

    problem = write_problem(p)
    if problem is not None:
        raise PgesamError(f"--out {out}: {problem}: choose a writable path")


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio ([N] or [N, C]) as 16-bit PCM; creates the folder."""
    import soundfile as sf  # noqa: PLC0415

    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return p


def quote(text: str) -> str:

    return shlex.quote(text)
