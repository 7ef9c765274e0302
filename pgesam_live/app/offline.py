"""Offline subcommands: `note`, `render`, and `replay` (offline with --out; live otherwise)."""

from __future__ import annotations

import json
import math
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.app.build import (
    LIVE_PREROLL_S,
    MAX_BOUNCE_S,
    MAX_REPLAY_S,
    TAIL_S,
    OfflineRig,
    named_points,
)
from pgesam_live.app.common import check_out_path, quote, settings_from_args, write_wav
from pgesam_live.app.inputs import apply_patch_settings, journal_model, load_checked
from pgesam_live.errors import PgesamError
from pgesam_live.settings import Settings
from pgesam_live.vocab.instruments import find_instrument


def _speed(audio_s: float, wall_s: float) -> str:
    """`in 12.3 s (29x real time)`: how fast a bounce went."""
    ratio = audio_s / max(wall_s, 1e-6)
    return f"in {wall_s:.1f} s ({ratio:.0f}x real time)" if ratio >= 9.5 else \
        f"in {wall_s:.1f} s ({ratio:.2g}x real time)"  # a slow or busy machine: 0.29x, not 0x


def note_where(words: list[str], points: dict[str, tuple[float, float]],
               training_points: list[dict[str, Any]] | None = None
               ) -> tuple[str | None, float, float, str]:
    """`X Y PITCH` or `NAME PITCH` (one of `points`, the demo patches' named points, as `at
    NAME` before a patch is loaded, or one of `training_points`' instruments: `violin C4`)
    -> (name, x, y, pitch)."""
    if len(words) == 3:
        try:
            return None, float(words[0]), float(words[1]), words[2]
        except ValueError:
            raise PgesamError(f"note: {words[0]!r} {words[1]!r} are not coordinates; give "
                              "X Y PITCH (e.g. 0.3 0.1 C4) or NAME PITCH (e.g. glass C4)") \
                from None
    if len(words) == 2:
        inst = find_instrument(words[0], training_points or [])
        if words[0] not in points and inst is not None:
            return words[0], inst.x, inst.y, words[1]
        if words[0] not in points:
            known = ", ".join(sorted(points)) or "none (no demo patches found)"
            raise PgesamError(f"note: no point named {words[0]!r}; the named points: {known} "
                              "or a training instrument (a word of its program: piano, "
                              "violin) (or give X Y PITCH)")
        x, y = points[words[0]]
        return words[0], float(x), float(y), words[1]
    raise PgesamError(f"note: give X Y PITCH (e.g. 0.3 0.1 C4) or NAME PITCH (e.g. glass C4), "
                      f"not {len(words)} words")


def run_note(ns: Namespace) -> int:
    """`pgesam-live note X Y PITCH|NAME PITCH [--out WAV] [--velocity V]`: one note through
    the model."""
    from pgesam_live.audio.voices import velocity_gain  # noqa: PLC0415
    from pgesam_live.model.synth import Synth, resolve_device  # noqa: PLC0415
    from pgesam_live.notes import (  # noqa: PLC0415
        note_to_midi,
        playable_range,
        range_text,
        rendered_pitch,
    )
    from pgesam_live.render.dsp import (
        normalise_peak,  # noqa: PLC0415
        repitch,  # noqa: PLC0415
    )

    s = settings_from_args(ns)
    points = named_points(s.patch_dir) if len(ns.where) == 2 else {}
    synth = None
    if len(ns.where) == 2 and ns.where[0] not in points:
        synth = Synth.load(s.model, device=resolve_device(s.device))  # where its instruments are
    name, ns.x, ns.y, ns.pitch = note_where(ns.where, points,
                                            synth.training_points if synth else None)
    pitch = note_to_midi(ns.pitch)
    if ns.out is None:
        place = name or f"{ns.x:g}_{ns.y:g}"
        ns.out = f"note-{place}-{ns.pitch}.wav".replace("#", "s")
    out_path = check_out_path(ns.out, (".wav",))
    if not 0.0 <= ns.velocity <= 1.0:
        raise PgesamError(f"velocity {ns.velocity} is out of range 0..1")
    for axis, v in (("x", ns.x), ("y", ns.y)):
        if not np.isfinite(v) or abs(v) > 1.5:
            raise PgesamError(f"{axis} = {v} is outside the map: use -1.5..1.5")
    synth = synth or Synth.load(s.model, device=resolve_device(s.device))
    model_range = (int(synth.pitch_range[0]), int(synth.pitch_range[1]))
    lo, hi = playable_range(model_range)
    if not lo <= pitch <= hi:
        raise PgesamError(f"pitch {pitch} is outside what the model plays: "
                          f"{range_text(model_range)}")
    rp = rendered_pitch(pitch, model_range)
    audio = synth.render(np.array([[ns.x, ns.y]], np.float32), np.array([rp]), seed=ns.seed)
    audio = normalise_peak(audio)[0]
    if rp != pitch:  # beyond the model's range: its edge note re-pitched, as the engine does
        audio = repitch(audio, float(pitch - rp))
    audio = audio * velocity_gain(ns.velocity)
    sr = synth.sample_rate
    if s.sample_rate and s.sample_rate != sr:
        from pgesam_live.render.dsp import resample  # noqa: PLC0415

        audio, sr = resample(audio, sr, s.sample_rate), s.sample_rate
    out = write_wav(out_path, audio, sr)
    at = f"{name} " if name else ""
    print(f"{out}: pitch {pitch} at {at}({ns.x:+.2f}, {ns.y:+.2f}), {len(audio) / sr:.2f} s, "
          f"{sr} Hz, model {synth.model_id}")
    return 0


def run_render(ns: Namespace) -> int:
    """`pgesam-live render PATCH --out WAV [--seconds S]`: offline bounce."""
    s = settings_from_args(ns)
    out_path = check_out_path(ns.out, (".wav",))
    patch, s = load_checked(ns.patch, s, ns.model)
    path = Path(patch.path)
    s = apply_patch_settings(s, patch, ns.model)
    seconds = ns.seconds
    if seconds is None and patch.length_beats() is None:
        raise PgesamError(f"{path}: a sequence repeats forever (repeat: 0); give the bounce a "
                          "length with --seconds S")
    if seconds is not None and (not math.isfinite(seconds) or not 0 < seconds <= MAX_BOUNCE_S):
        raise PgesamError(f"--seconds {seconds}: give a length > 0 and at most {MAX_BOUNCE_S:g}")
    rig = OfflineRig(s, spill=True)
    wall = time.monotonic()
    try:
        length = patch.length_beats()
        rig.bar(seconds if seconds is not None else
                (None if length is None else length * 60.0 / s.tempo_bpm), f"render {path.name}")
        rig.submit_or_fail(f"load {quote(str(path))}", src="patch", at_s=0.0)
        if seconds is None:
            # To the end: the last note (tempo changes included) and its ring-out.
            seconds = rig.run_to_end(0.0, MAX_BOUNCE_S)
        else:
            rig.run_until(seconds)
        out = rig.save(out_path, seconds=seconds)
    finally:
        rig.close()
    print(f"{out}: {seconds:.2f} s at {rig.audio.sample_rate} Hz, "
          f"{rig.engine.scheduler.counters.notes} notes, {rig.renderer.rendered} rendered, "
          f"{_speed(seconds, time.monotonic() - wall)}")
    return 0


#: journal header key -> setting, in the order a replay applies them
HEADER_SETTINGS = (("seed", "seed"), ("tempo", "tempo_bpm"), ("lookahead_s", "lookahead_s"),
                   ("sample_rate", "sample_rate"), ("cache_grid", "cache_grid"))


def header_settings(s: Settings, header: dict[str, Any], session: str,
                    **given: Any) -> Settings:
    """`s` with a journal header's settings (HEADER_SETTINGS; a key an older journal lacks
    keeps `s`'s), except those `given` on the command line; a bad value is named with its
    line."""
    for key, field in HEADER_SETTINGS:
        if given.get(field) is not None:
            continue
        try:
            s = s.replace(**{field: header.get(key)})
        except PgesamError as e:
            raise PgesamError(f"{session}:1: header \"{key}\" = {json.dumps(header.get(key))}: "
                              f"{e} (edit the journal's first line)") from None
    return s


def run_replay(ns: Namespace) -> int:
    """`pgesam-live replay SESSION [--out WAV]`: live, or offline through the same engine."""
    from pgesam_live.patches.files import find_patch  # noqa: PLC0415
    from pgesam_live.sessions.journal import patch_changes, read_schedule  # noqa: PLC0415
    from pgesam_live.sessions.replay import submit_schedule  # noqa: PLC0415

    header, schedule, read = read_schedule(ns.session)  # read and parsed once
    for text in read.skipped:  # one damaged line never costs the rest of the session
        print(f"skipped {text}", file=sys.stderr)
    for e in read:  # a damaged time is one bad line too: the rest plays
        if e.t_s > MAX_REPLAY_S:
            print(f"skipped {ns.session}:{e.line_no}: \"t\" {e.t_s:.0f} s lies past the "
                  f"{MAX_REPLAY_S / 3600:g} h a replay runs; repair that line's t",
                  file=sys.stderr)
    schedule = [item for item in schedule if item[0] <= MAX_REPLAY_S]
    if read.truncated:
        print(f"{ns.session}: the last line was cut off (a crash mid-write); replaying up to "
              "the line before it", file=sys.stderr)
    s = settings_from_args(ns)
    s = header_settings(s, header, ns.session, lookahead_s=getattr(ns, "lookahead", None),
                        sample_rate=getattr(ns, "sample_rate", None))
    for line in patch_changes(ns.session, lambda name: find_patch(name, s.patch_dir)):
        print(f"{ns.session}: {line}", file=sys.stderr)
    try:
        s = s.replace(model=journal_model(ns.session, str(header.get("model") or ""),
                                           ns.model, s.model))
    except PgesamError as e:
        raise PgesamError(f"{ns.session}:1: header: {e}") from None
    out_path = check_out_path(ns.out, (".wav",)) if ns.out is not None else None
    if out_path is not None and out_path.is_file() and \
            out_path.resolve() == Path(ns.session).with_suffix(".wav").resolve():
        raise PgesamError(f"--out {ns.out} is the session's own live recording; a bounce "
                          f"never replaces it: choose another name, e.g. "
                          f"{out_path.with_name(out_path.stem + '-replay.wav')}")
    if out_path is None:
        from pgesam_live.app.live import run_live  # noqa: PLC0415

        return run_live(s, replay=schedule)
    # The live clock's pre-roll, so sequences start where they started live.
    rig = OfflineRig(s, preroll_s=LIVE_PREROLL_S, spill=True)
    wall = time.monotonic()
    try:
        rig.bar((schedule[-1][0] if schedule else 0.0) + TAIL_S, f"replay {Path(ns.session).name}")
        submit_schedule(rig.engine, schedule, 0.0,
                        lambda text: print(f"{ns.session}: {text}", file=sys.stderr))
        # Past the last command: what it started plays on for TAIL_S at most (the session
        # went on until quit, which is not journalled), then what sounds rings out.
        last_s = schedule[-1][0] if schedule else 0.0
        end_s = rig.run_to_end(last_s, last_s + TAIL_S)
        out = rig.save(out_path, seconds=end_s)
    finally:
        rig.close()
    print(f"{out}: {len(schedule)} commands, {end_s:.2f} s, {rig.renderer.rendered} notes "
          f"rendered, {_speed(end_s, time.monotonic() - wall)}")
    return 0
