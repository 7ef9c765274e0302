"""Render NSynth-format notes from General MIDI soundfonts with pyfluidsynth."""

from __future__ import annotations

import numpy as np

from pgesam_live.errors import DataError

APT_HINT = ("apt-get install libfluidsynth3 fluid-soundfont-gm musescore-general-soundfont "
            "timgm6mb-soundfont")


def _fluidsynth():  # type: ignore[no-untyped-def]
    try:
        import fluidsynth  # noqa: PLC0415
    except (ImportError, OSError) as e:  # the wheel loads libfluidsynth at import
        raise DataError(f"libfluidsynth is missing ({e}); install it: {APT_HINT}") from e
    return fluidsynth


def render_note(soundfont: str, program: int, pitch: int, velocity: int = 100,
                sample_rate: int = 24000, hold_s: float = 3.0, release_s: float = 1.0,
                bank: int = 0) -> np.ndarray:
    """One mono note, reverb and chorus off: float32 [N], N = (hold_s + release_s) * rate."""
    fs_mod = _fluidsynth()
    # Settings must reach fluidsynth before the synth is created, hence the kwargs.
    off = {"synth.reverb.active": 0, "synth.chorus.active": 0}
    fs = fs_mod.Synth(samplerate=float(sample_rate), gain=0.5, **off)
    try:
        sfid = fs.sfload(soundfont)
        if sfid < 0:
            raise DataError(f"cannot load soundfont {soundfont}; install one: {APT_HINT}")
        fs.program_select(0, sfid, bank, program)
        n_hold = int(round(hold_s * sample_rate))
        n_rel = int(round(release_s * sample_rate))
        fs.noteon(0, pitch, velocity)
        a = fs.get_samples(n_hold)
        fs.noteoff(0, pitch)
        b = fs.get_samples(n_rel)
        st = np.concatenate([a, b]).astype(np.float32) / 32768.0  # interleaved stereo int16
        mono = 0.5 * (st[0::2] + st[1::2])
        return mono.astype(np.float32)
    finally:
        fs.delete()
