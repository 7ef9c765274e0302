"""Wiring: builds the engine from settings and runs the front ends.

`run_*` functions are the CLI's subcommands (see cli.py). Nothing musical happens here: the
engine (core.py) is the one door; the front ends translate input into its commands.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
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
        sample_rate=getattr(ns, "sample_rate", None),
        lookahead_s=getattr(ns, "lookahead", None),
    )


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio ([N] or [N, C]) as 16-bit PCM; creates the folder."""
    import soundfile as sf  # noqa: PLC0415

    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return p


def run_note(ns: Namespace) -> int:
    """`pgesam-live note X Y PITCH --out WAV [--velocity V]`: one note through the model."""
    from pgesam_live.model.synth import Synth, pick_device  # noqa: PLC0415
    from pgesam_live.notes import note_to_midi  # noqa: PLC0415
    from pgesam_live.voices import velocity_gain  # noqa: PLC0415

    pitch = note_to_midi(ns.pitch)
    if not 0.0 <= ns.velocity <= 1.0:
        raise PgesamError(f"velocity {ns.velocity} is out of range 0..1")
    for name, v in (("x", ns.x), ("y", ns.y)):
        if not np.isfinite(v) or abs(v) > 1.5:
            raise PgesamError(f"{name} = {v} is outside the map: use -1.5..1.5")
    synth = Synth.load(ns.model, device=pick_device(ns.device))
    audio = synth.render(np.array([[ns.x, ns.y]], np.float32), np.array([pitch]), seed=ns.seed)[0]
    audio = audio * velocity_gain(ns.velocity)
    sr = synth.sample_rate
    if ns.sample_rate and ns.sample_rate != sr:
        from pgesam_live.audio import resample  # noqa: PLC0415

        audio, sr = resample(audio, sr, ns.sample_rate), ns.sample_rate
    out = write_wav(ns.out, audio, sr)
    print(f"{out}: pitch {pitch} at ({ns.x:+.2f}, {ns.y:+.2f}), {len(audio) / sr:.2f} s, "
          f"{sr} Hz, model {synth.model_id}")
    return 0


def run_doctor(ns: Namespace) -> int:
    """`pgesam-live doctor`: what works on this machine and what to do about what doesn't."""
    s = settings_from_args(ns)
    rows: list[tuple[str, bool, str]] = []

    # Audio.
    try:
        os.environ.setdefault("PYO_GUI_WX", "0")
        import pyo  # noqa: PLC0415

        n_dev = pyo.pa_count_devices()
        if n_dev > 0:
            rows.append(("audio", True, f"portaudio: {n_dev} device(s); default output "
                                        f"{pyo.pa_get_default_output()}"))
        else:
            rows.append(("audio", False, "no sound card: `--audio auto` records to "
                                         "sessions/<stamp>.wav instead (or run jackd -d dummy "
                                         "and use --audio jack)"))
    except Exception as e:  # doctor reports, it never crashes
        rows.append(("audio", False, f"pyo unavailable ({e}): run `make setup`"))
    rows.append(("jack", shutil.which("jackd") is not None,
                  "jackd found" if shutil.which("jackd") else
                  "jackd not installed (optional: apt-get install jackd2)"))

    # Torch device and model.
    try:
        import torch  # noqa: PLC0415

        cuda = torch.cuda.is_available()
        rows.append(("torch", True, f"torch {torch.__version__}; "
                     + (f"CUDA: {torch.cuda.get_device_name(0)}" if cuda else
                        "CPU only (the model renders on the CPU; --device cuda needs a GPU)")))
    except Exception as e:
        rows.append(("torch", False, f"torch unavailable ({e}): run `make setup`"))
    try:
        from pgesam_live.model.checkpoints import resolve_model  # noqa: PLC0415

        path = resolve_model(s.model)
        rows.append(("model", True, f"{path} ({path.stat().st_size / 1e6:.1f} MB)"))
    except PgesamError as e:
        rows.append(("model", False, str(e)))

    # OSC port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((s.osc_host, s.osc_port))
        rows.append(("osc", True, f"udp {s.osc_host}:{s.osc_port} is free"))
    except OSError as e:
        rows.append(("osc", False, f"udp {s.osc_host}:{s.osc_port}: {e.strerror}; pick another "
                                   f"with --osc-port"))
    finally:
        sock.close()

    # MIDI.
    try:
        from pgesam_live.midi import list_ports  # noqa: PLC0415

        ins, err = list_ports()
        if err:
            rows.append(("midi", False, err))
        else:
            rows.append(("midi", bool(ins), ", ".join(ins) if ins else
                         "no MIDI inputs (plug a keyboard in, then --midi auto)"))
    except Exception as e:
        rows.append(("midi", False, f"MIDI unavailable ({e})"))

    # Soundfont data set tooling.
    try:
        from pgesam_live.model.soundfont import _fluidsynth  # noqa: PLC0415

        _fluidsynth()
        sf2 = sorted(str(p) for p in Path("/usr/share/sounds").glob("sf*/*.sf[23]"))
        rows.append(("soundfonts", bool(sf2), ", ".join(sf2) if sf2 else
                     "libfluidsynth found but no GM soundfont: apt-get install fluid-soundfont-gm"))
    except PgesamError as e:
        rows.append(("soundfonts", False, str(e)))

    width = max(len(r[0]) for r in rows)
    for name, ok, text in rows:
        print(f"{'ok ' if ok else '-- '} {name:<{width}}  {text}")
    sys.stdout.flush()
    return 0
