"""A timbre point as a multisample: one note per pitch rendered at the point, written as 24-bit
WAV files at the model's rate, and an SFZ file that maps the keyboard onto them, so a producer
loads the timbre into any SFZ sampler (or converts it to SF2 with polyphone).

Per sample (render/loop.py finds the loop): a region for its key (the lowest and highest
regions stretch to MIDI 0 and 127: keys beyond the model's range play the nearest sample
re-pitched by the sampler, as samplers do), `pitch_keycenter`, velocity tracking
(`amp_veltrack=100`: the model takes no velocity yet, so there is one layer), and for a
sustaining sound its loop (`loop_mode=loop_continuous`, `loop_start` / `loop_end`, the seam
crossfaded inside the file, so a sampler without crossfade support loops it cleanly) and a
release time (`ampeg_release`) measured on the note's own rendered release. A decaying sound
(a piano, a plucked string) is not looped: its file is the note as the instrument holds it
(the render up to its loop, then the loop fading on at the measured decay until it has
fallen 60 dB or DECAY_FILE_MAX_S), not the render's 3 s and release, so a key held longer
keeps decaying as the instrument does (`loop_mode=no_loop`), and the measured release when
let go.

`export_point(synth, x, y, out_dir)` does it all; `progress(done, total)` hears of each note.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.errors import CheckpointError, ConfigError
from pgesam_live.notes import (
    NoteError,
    midi_to_note,
    parse_pitch,
    parse_pitch_span,
    span_ends,
)
from pgesam_live.render.dsp import normalise_peak
from pgesam_live.render.loop import (
    LOOP_END_MARGIN_S,
    Sustain,
    blend,
    envelope_db,
    level_db,
)

EXPORT_BATCH = 8  # notes per render call (small enough for the progress bar to move)
RELEASE_TO_DB = -60.0  # the rendered release is timed to fall this far ...
SF2_RELEASE_DB = 100.0  # ... and scaled to an SF2 release's span (volEnvRelease: to -100 dB)
RELEASE_MIN_S = 0.01
RELEASE_FLOOR_MARGIN_DB = 6.0  # a release is timed to this far above the render's last level
# A decaying sound's file: at most this long (a decay of DECAY_MIN_DB_PER_S = 3 dB/s, the
# slowest that is not looped, falls 60 dB in 20 s after the loop end) ...
DECAY_FILE_MAX_S = 25.0
DECAY_END_FADE_S = 0.1  # ... its last samples faded
SFZ_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
Progress = Callable[[int, int], object]


@dataclass(frozen=True)
class ExportedSample:
    """One region: its file (relative to the SFZ), key range, root key and loop (None when
    not looped: a decaying sound), and its release time."""

    file: str
    pitch: int
    lokey: int
    hikey: int
    loop: tuple[int, int] | None  # (loop_start, loop_end) in samples, loop_end inclusive
    release_s: float


@dataclass
class ExportResult:
    sfz: Path
    samples: list[ExportedSample] = field(default_factory=list)
    sample_rate: int = 0

    @property
    def files(self) -> list[Path]:
        return [self.sfz.parent / s.file for s in self.samples]


def check_export_name(name: str) -> str:
    """A file-name-safe export name, or ConfigError naming the rule."""
    if not SFZ_NAME_RE.match(name) or name[0] in ".-":
        raise ConfigError(f"export name {name!r}: use 1-64 letters, digits, _ . -, starting "
                          "with a letter, digit or _ (it names the SFZ and its WAV files)")
    return name


def coords_label(x: float, y: float) -> str:
    """A point's coordinates as a file name: (0.2, -0.3) -> `p0.20_m0.30` (signs spelt, so
    a name never starts with `-`); point names keep their own spelling (`warm-pad`)."""
    return f"{x:+.2f}_{y:+.2f}".replace("+", "p").replace("-", "m")


def release_time_s(sustain: Sustain) -> float:
    """The `ampeg_release` of a note: how long its rendered release takes to fall
    RELEASE_TO_DB below the level at its onset (10 ms envelope frames), scaled to
    SF2_RELEASE_DB, the span over which an SF2 player's release (linear in dB) runs: so the
    converted release falls as fast as the rendered one. A quiet release (a decayed piano
    note) reaches the render's floor first: it is timed down to RELEASE_FLOOR_MARGIN_DB above
    the render's last level and its rate extended; one that never falls that far lasts the
    rest of the render."""
    sr = sustain.sample_rate
    env = envelope_db(sustain.audio, sr)
    hop = int(round(0.01 * sr))
    i0 = min(len(env) - 1, sustain.release_onset // hop)
    ref = float(env[max(0, i0 - 2): i0 + 1].max())
    floor = float(env[-3:].max()) if len(env) - i0 > 3 else ref
    target = max(ref + RELEASE_TO_DB, floor + RELEASE_FLOOR_MARGIN_DB)
    fall_db = ref - target
    below = np.flatnonzero(env[i0:] < target)
    if fall_db < RELEASE_FLOOR_MARGIN_DB or not len(below):
        frames, fall_db = len(env) - i0, -RELEASE_TO_DB
    else:
        frames = int(below[0])
    # `fall_db` in `frames`: the SF2 release's whole span at that rate
    return max(RELEASE_MIN_S, frames * 0.01 * SF2_RELEASE_DB / fall_db)


def file_with_loop(sustain: Sustain) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The sample as written: float32 [N] and its loop (start, end inclusive) or None.

    A sampler jumps from loop_end to loop_start without crossfading, and on release may play
    on past loop_end; so the file keeps the render as it is after the loop start's
    crossfade region and crossfades the first samples of the loop from the material that
    followed the loop end (what the jump continues from) into the loop start's own."""
    x = sustain.audio.astype(np.float32).copy()
    if not sustain.looped:
        return x, None
    if sustain.decay_db_per_s:
        return decaying_file(sustain), None
    ls, le = sustain.loop_start, sustain.loop_end
    assert ls is not None and le is not None
    sr = sustain.sample_rate
    xf = min((le - ls) // 4, int(LOOP_END_MARGIN_S * sr), len(x) - le)
    if xf > 0:
        x[ls: ls + xf] = blend(sustain.audio[le: le + xf], sustain.audio[ls: ls + xf],
                               sustain.seam_ncc)
    return x, (ls, le - 1)


def decaying_file(sustain: Sustain) -> np.ndarray:
    """A decaying sound's sample, float32 [N]: the note held for ever as the instrument plays
    it (Sustain.render: the head, then the loop fading on at the measured decay) until it has
    fallen -RELEASE_TO_DB below its loop's level, at most DECAY_FILE_MAX_S, the end faded."""
    sr = sustain.sample_rate
    assert sustain.loop_end is not None and sustain.decay_db_per_s < 0
    n = sustain.loop_end + int(RELEASE_TO_DB / sustain.decay_db_per_s * sr)
    n = max(len(sustain.audio) // 2, min(n, int(DECAY_FILE_MAX_S * sr)))
    x = sustain.render(0, n)
    fade = min(n, int(DECAY_END_FADE_S * sr))
    x[n - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return x


def _bad_end(text: str) -> NoteError | None:
    """What is wrong with a span's end (`20-200`: 200 is outside MIDI), if `text` is one."""
    for end in span_ends(text) or ():
        try:
            parse_pitch(end)
        except NoteError as exc:
            return exc
    return None


def parse_pitch_range(text: str, pitch_range: tuple[int, int]) -> list[int]:
    """`C3-C5`, `48-72` or one pitch (`C4`) -> the MIDI pitches of it within the model's
    range; ConfigError naming the forms, or the range, otherwise."""
    span = parse_pitch_span(text)
    if span is None:
        try:
            one = parse_pitch(text.strip())
        except NoteError as exc:
            raise ConfigError(f"--pitches {text!r}: {_bad_end(text) or exc}; give a span "
                              "like C3-C5 or 48-72") from None
        span = (one, one)
    lo, hi = span
    if lo > hi:
        raise ConfigError(f"--pitches {text!r}: the low end is above the high end")
    mlo, mhi = pitch_range
    inside = [p for p in range(lo, hi + 1) if mlo <= p <= mhi]
    if not inside:
        raise ConfigError(f"--pitches {text!r} lies outside the model's range "
                          f"{midi_to_note(mlo)}-{midi_to_note(mhi)} ({mlo}-{mhi}); keys "
                          "beyond it play the nearest sample anyway: choose pitches inside")
    if len(inside) < hi - lo + 1:
        warnings.warn(f"--pitches {text}: the model renders {midi_to_note(mlo)}-"
                      f"{midi_to_note(mhi)}; exporting {midi_to_note(inside[0])}-"
                      f"{midi_to_note(inside[-1])}, and the SFZ plays keys beyond from the "
                      "nearest sample", stacklevel=2)
    return inside


def sfz_text(samples: Sequence[ExportedSample], header: str) -> str:
    lines = [f"// {line}" for line in header.splitlines()]
    lines += ["", "<global>", "amp_veltrack=100", ""]
    for s in samples:
        opcodes = [f"sample={s.file}", f"lokey={s.lokey}", f"hikey={s.hikey}",
                   f"pitch_keycenter={s.pitch}", f"ampeg_release={s.release_s:.3f}"]
        if s.loop is not None:
            opcodes += ["loop_mode=loop_continuous", f"loop_start={s.loop[0]}",
                        f"loop_end={s.loop[1]}"]
        else:
            opcodes += ["loop_mode=no_loop"]
        lines.append("<region> " + " ".join(opcodes))
    return "\n".join(lines) + "\n"


SILENT_PEAK = 1e-5  # a rendered note whose peak is under this (-100 dBFS) is silence


def _check_rendered(audio: np.ndarray, pitches: Sequence[int], x: float, y: float) -> None:
    """Refuse to export notes a sampler would play as silence or noise: NaN or infinite
    samples (a diverged or damaged model), or a note with no sound at all."""
    for p, a in zip(pitches, audio, strict=True):
        if not np.isfinite(a).all():
            raise CheckpointError(f"export: the model rendered non-finite samples at pitch {p} "
                                  f"(point {x:+.3f} {y:+.3f}): the model file is damaged or "
                                  "diverged; run `pgesam-live doctor` or choose another "
                                  "--model")
        if float(np.abs(a).max(initial=0.0)) < SILENT_PEAK:
            raise ConfigError(f"export: pitch {p} is silent at point ({x:+.3f}, {y:+.3f}); "
                              "nothing was written: choose another point or pitch range")


def export_point(synth: Any, x: float, y: float, out_dir: str | Path,
                 pitches: Sequence[int] | None = None, name: str | None = None, seed: int = 0,
                 progress: Progress | None = None) -> ExportResult:
    """Render the point (x, y) at `pitches` (default: the model's whole range) and write
    `out_dir/NAME.sfz` and `out_dir/NAME_<midi>_<note>.wav` (24-bit, the model's rate).

    synth: a model.synth.Synth (or anything with sample_rate, pitch_range, model_id and
    render(points [B, 2], pitches [B], seed) -> float32 [B, N]). Notes are played at one
    level (dsp.normalise_peak), as the instrument plays them."""
    import soundfile as sf  # noqa: PLC0415

    lo, hi = (int(v) for v in synth.pitch_range)
    want = list(range(lo, hi + 1)) if pitches is None else sorted({int(p) for p in pitches})
    if not want:
        raise ConfigError("export: no pitches to render; give e.g. --pitches C3-C5")
    bad = [p for p in want if not lo <= p <= hi]
    if bad:
        raise ConfigError(f"export: pitch {bad[0]} is outside the model's range {lo}..{hi}; "
                          "keys beyond it are mapped to the nearest sample")
    for v in (x, y):
        if not np.isfinite(v):
            raise ConfigError(f"export: the point ({x}, {y}) must be finite numbers")
    name = check_export_name(name or coords_label(x, y))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export: {out} is a file; give a folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    sr = int(synth.sample_rate)
    total = len(want)
    done = 0
    if progress is not None:
        progress(0, total)
    rendered: dict[int, np.ndarray] = {}
    for i in range(0, total, EXPORT_BATCH):
        batch = want[i: i + EXPORT_BATCH]
        pts = np.tile(np.array([[x, y]], np.float32), (len(batch), 1))
        raw = np.asarray(synth.render(pts, np.array(batch, np.int64), seed=seed))
        _check_rendered(raw, batch, x, y)
        audio = normalise_peak(raw)
        for p, a in zip(batch, audio, strict=True):
            rendered[p] = a
        done += len(batch)
        if progress is not None:
            progress(done, total)
    samples: list[ExportedSample] = []
    for k, p in enumerate(want):
        sus = Sustain.analyse(rendered[p], sr, 440.0 * 2 ** ((p - 69) / 12), hold_s=None)
        data, loop = file_with_loop(sus)
        fname = f"{name}_{p:03d}_{midi_to_note(p).replace('#', 's')}.wav"
        sf.write(out / fname, data, sr, subtype="PCM_24")
        lokey = 0 if k == 0 else (want[k - 1] + p) // 2 + 1
        hikey = 127 if k == len(want) - 1 else (p + want[k + 1]) // 2
        samples.append(ExportedSample(fname, p, lokey, hikey, loop, release_time_s(sus)))
    header = (f"pgesam-live export: point ({x:+.4f}, {y:+.4f}) of model {synth.model_id}, "
              f"seed {seed}\n{len(samples)} samples, 24-bit {sr} Hz; one velocity layer "
              f"(amp_veltrack=100)")
    sfz = out / f"{name}.sfz"
    sfz.write_text(sfz_text(samples, header), encoding="utf-8")
    return ExportResult(sfz, samples, sr)


__all__ = ["ExportResult", "ExportedSample", "check_export_name", "coords_label",
           "decaying_file", "export_point",
           "file_with_loop", "level_db", "parse_pitch_range", "release_time_s", "sfz_text"]
