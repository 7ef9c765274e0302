"""`pgesam-live doctor`: what works on this machine and what to do about what doesn't."""

from __future__ import annotations

import shutil
import sys
from argparse import Namespace
from pathlib import Path

from pgesam_live.app.common import settings_from_args
from pgesam_live.errors import PgesamError


def run_doctor(ns: Namespace) -> int:
    """`pgesam-live doctor`: what works on this machine and what to do about what doesn't."""
    s = settings_from_args(ns)
    rows: list[tuple[str, bool, str]] = []

    # Audio.
    try:
        from pgesam_live.audio.server import portaudio_output_available  # noqa: PLC0415

        ok, why = portaudio_output_available()
        rows.append(("audio", ok, f"portaudio: {why}" if ok else
                     f"{why}: `--audio auto` records to sessions/<stamp>.wav instead (or run "
                     f"jackd -d dummy and use --audio jack)"))
    except Exception as e:  # doctor reports, it never crashes
        rows.append(("audio", False, f"pyo unavailable ({e}): run `make setup`"))
    rows.append(("jack", shutil.which("jackd") is not None,
                  "jackd found" if shutil.which("jackd") else
                  "jackd not installed (optional: apt-get install jackd2)"))

    # Torch device and model.
    try:
        import torch  # noqa: PLC0415

        cuda = torch.cuda.is_available()
        wants_cuda = str(s.device).strip().lower().startswith("cuda")
        rows.append(("torch", cuda or not wants_cuda, f"torch {torch.__version__}; "
                     + (f"CUDA: {torch.cuda.get_device_name(0)}" if cuda else
                        "CPU only: --device cuda needs a GPU; use --device cpu or auto"
                        if wants_cuda else
                        "CPU only (the model renders on the CPU; --device cuda needs a GPU)")))
    except Exception as e:
        rows.append(("torch", False, f"torch unavailable ({e}): run `make setup`"))
    try:
        from pgesam_live.model.checkpoints import (  # noqa: PLC0415
            read_model_payload_verified,
            resolve_model,
        )

        path = resolve_model(s.model)
        # Checksums, format, a packed file's base.
        obj, model_id, verified = read_model_payload_verified(path)
        how = ("verified" if verified else
               "reads, but cannot be verified: an older file without a checksum inside, "
               "renamed: keep its <name>-<hash>.pt name so that the hash is checked")
        mem = obj.get("spectral_memory")
        if mem is not None:  # (checked as it was read)
            n_i = len(mem["xy"])
            reach = f", reach {mem['reach']:g}" if mem.get("reach") is not None else ""
            kind = ("spectra and how their notes move" if mem.get("dynamics") is not None
                    else "note-long spectra")
            how += f"; a spectral memory of its {n_i} training instruments ({kind}{reach})"
        rows.append(("model", True, f"{path} ({path.stat().st_size / 1e6:.1f} MB, "
                                    f"{model_id}): {how}"))
    except PgesamError as e:
        rows.append(("model", False, str(e)))

    # OSC port.
    from pgesam_live.frontends.osc_server import osc_port_problem  # noqa: PLC0415

    problem = osc_port_problem(s.osc_host, s.osc_port)
    rows.append(("osc", problem is None, problem or f"udp {s.osc_host}:{s.osc_port} is free"))

    # The web page (optional: the instrument plays on without it).
    from pgesam_live.frontends.web import web_port_problem  # noqa: PLC0415

    if not s.web:
        rows.append(("web", True, "off (--no-web)"))
    else:
        problem = web_port_problem(s.web_host, s.web_port)
        rows.append(("web", problem is None, problem or
                     f"tcp {s.web_host}:{s.web_port} is free: the page will be "
                     f"http://{s.web_host}:{s.web_port}/"))

    # MIDI.
    try:
        from pgesam_live.frontends.midi import list_ports  # noqa: PLC0415

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
    # The instrument cannot start without these (torch: the device asked for); the rest have
    # fallbacks (record mode) or are optional. Exit 1 tells a script so.
    blocking = [name for name, ok, _ in rows if not ok and name in ("torch", "model", "osc")]
    if blocking:
        print(f"pgesam-live cannot start until {' and '.join(blocking)} "
              f"{'is' if len(blocking) == 1 else 'are'} fixed (see above)")
    sys.stdout.flush()
    return 1 if blocking else 0
