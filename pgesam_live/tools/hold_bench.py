"""Issue 16's held-note figures, merged into `pgesam-live bench`.

- ``seam_flux_ratio`` (median, ``_max``), ``seam_level_step_db`` (median, ``_max``; net of the
  sound's own level wobble, render/loop.seam_figures) and ``seam_level_step_raw_db_max``: the
  loops the instrument finds in the bundled model's notes at HOLD_PROGRAMS' training points
  and SEAM_PITCHES (targets: ratio <= 1.5, step <= 0.5 dB).
- ``release_err_<h>s_db`` (median over the programs, ``_max``) for h = 0.5, 2 and 10 s: the
  model's note held h seconds and let go (its loop, then its own rendered release) against
  the original instrument (FluidR3 GM, the program the training point came from) held h
  seconds: the largest dB difference of the level envelopes over the first 300 ms after the
  note-off, each re its level just before it (target: 3 dB). ``release_method_err_<h>s_db``:
  the same comparison with the original's own 3 s note looped and released by the same
  machinery: the method alone, without the model's error. ``release_codec_err_<h>s_db``: the
  same with the original's 3 s note through the model's codec and back (encode, decode) first:
  the ceiling a generator that reproduced the codec's frames of the original exactly would
  reach (the codec's 75 frames/s smear a release that cuts in under a frame).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgesam_live.errors import ConfigError

HOLD_PROGRAMS = (16, 22, 40, 56, 65, 71, 73, 81)  # sustaining GM instruments of the map
SEAM_DECAYING = (0, 24)  # a piano and a guitar: loops of decaying sounds too
SEAM_PITCHES = (48, 60, 72)
RELEASE_PITCH = 60
HOLDS_S = (0.5, 2.0, 10.0)
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
HOLD_KEYS = ("seam_flux_ratio", "seam_flux_ratio_max", "seam_level_step_db",
             "seam_level_step_db_max", "seam_level_step_raw_db_max", "seam_loops",
             *(f"release_err_{h:g}s_db".replace(".", "p") for h in HOLDS_S),
             *(f"release_err_{h:g}s_db_max".replace(".", "p") for h in HOLDS_S),
             *(f"release_method_err_{h:g}s_db".replace(".", "p") for h in HOLDS_S),
             *(f"release_method_err_{h:g}s_db_max".replace(".", "p") for h in HOLDS_S),
             *(f"release_codec_err_{h:g}s_db".replace(".", "p") for h in HOLDS_S),
             *(f"release_codec_err_{h:g}s_db_max".replace(".", "p") for h in HOLDS_S),
             "release_programs")


def _key(kind: str, h: float, suffix: str = "") -> str:
    return f"{kind}_{h:g}s_db{suffix}".replace(".", "p")


def hold_figures(model: str = "default", device: str = "cpu",
                 soundfont: str = SOUNDFONT) -> dict[str, Any]:
    from pgesam_live.model.codec_eval import round_trip  # noqa: PLC0415
    from pgesam_live.model.soundfont import render_note, soundfont_problem  # noqa: PLC0415
    from pgesam_live.model.synth import Synth  # noqa: PLC0415
    from pgesam_live.render.dsp import normalise_peak  # noqa: PLC0415
    from pgesam_live.render.loop import Sustain, release_error_db, seam_figures  # noqa: PLC0415

    problem = soundfont_problem(soundfont)
    if problem:
        raise ConfigError(f"bench: the held-note figures compare with {soundfont}: {problem} "
                          "(apt-get install fluid-soundfont-gm libfluidsynth3)")
    synth = Synth.load(model, device=device)
    points = {t["name"]: (t["x"], t["y"]) for t in synth.training_points}
    lo, hi = synth.pitch_range

    def point(program: int) -> tuple[float, float]:
        name = f"fluidr3_gm_{program:03d}"
        if name not in points:
            raise ConfigError(f"bench: the model has no training point {name}")
        return points[name]

    def f0(p: int) -> float:
        return 440.0 * 2 ** ((p - 69) / 12)

    flux, step, raw = [], [], []
    for program in (*HOLD_PROGRAMS, *SEAM_DECAYING):
        pitches = [p for p in SEAM_PITCHES if lo <= p <= hi]
        pts = np.array([point(program)] * len(pitches), np.float32)
        for p, a in zip(pitches, normalise_peak(synth.render(pts, pitches)), strict=True):
            fig = seam_figures(Sustain.analyse(a, synth.sample_rate, f0(p)))
            if np.isfinite(fig["seam_flux_ratio"]):
                flux.append(fig["seam_flux_ratio"])
                step.append(fig["seam_level_step_db"])
                raw.append(fig["seam_level_step_raw_db"])
    out: dict[str, Any] = {
        "seam_flux_ratio": round(float(np.median(flux)), 3),
        "seam_flux_ratio_max": round(float(np.max(flux)), 3),
        "seam_level_step_db": round(float(np.median(step)), 3),
        "seam_level_step_db_max": round(float(np.max(step)), 3),
        "seam_level_step_raw_db_max": round(float(np.max(raw)), 3),
        "seam_loops": len(flux)}
    sr = synth.sample_rate
    pts = np.array([point(p) for p in HOLD_PROGRAMS], np.float32)
    notes = normalise_peak(synth.render(pts, [RELEASE_PITCH] * len(pts)))
    own_notes = np.stack([render_note(soundfont, p, RELEASE_PITCH, sample_rate=sr, hold_s=3.0,
                                      release_s=1.0) for p in HOLD_PROGRAMS])
    trips, _, _ = round_trip(synth.codec, own_notes.astype(np.float32),
                             [RELEASE_PITCH] * len(own_notes))
    errs: dict[str, dict[float, list[float]]] = {
        kind: {h: [] for h in HOLDS_S}
        for kind in ("release_err", "release_method_err", "release_codec_err")}
    for program, a, own, trip in zip(HOLD_PROGRAMS, notes, own_notes, trips, strict=True):
        originals = {h: render_note(soundfont, program, RELEASE_PITCH, sample_rate=sr,
                                    hold_s=h, release_s=1.0) for h in HOLDS_S}
        sustains = {"release_err": a, "release_method_err": own, "release_codec_err": trip}
        for kind, audio in sustains.items():
            sustain = Sustain.analyse(audio, sr, f0(RELEASE_PITCH))
            for h in HOLDS_S:
                errs[kind][h].append(release_error_db(sustain, originals[h], h))
    for kind, by_hold in errs.items():
        for h, e in by_hold.items():
            out[_key(kind, h)] = round(float(np.median(e)), 2)
            out[_key(kind, h, "_max")] = round(float(np.max(e)), 2)
    out["release_programs"] = ",".join(str(p) for p in HOLD_PROGRAMS)
    return out


__all__ = ["HOLD_KEYS", "hold_figures"]
