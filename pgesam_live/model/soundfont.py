"""Render NSynth-format notes from General MIDI soundfonts with pyfluidsynth.

`render_note` renders one note; `SoundfontRenderer` keeps one fluidsynth Synth per soundfont
open so a note costs a few milliseconds instead of a 0.17 s soundfont load;
`build_dataset` / `run_dataset_soundfont` (the `pgesam-live dataset soundfont` command) turn
whole soundfonts into an NSynth-format data set (nsynth-{train,valid,test}/examples.json +
audio/<note_str>.wav) with instrument-disjoint, seed-deterministic splits.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import shutil
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.errors import ConfigError, DataError
from pgesam_live.notes import NoteError, parse_pitch, parse_pitch_span

APT_HINT = ("apt-get install libfluidsynth3 fluid-soundfont-gm musescore-general-soundfont "
            "timgm6mb-soundfont")

# NSynth's families and sources, in NSynth id order (data.py re-exports these).
FAMILIES: tuple[str, ...] = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ",
                             "reed", "string", "synth_lead", "vocal")
SOURCES: tuple[str, ...] = ("acoustic", "electronic", "synthetic")

# The 128 General MIDI melodic program names (GM 1 level 1), for reports and the README table.
GM_NAMES: tuple[str, ...] = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone",
    "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ",
    "Reed Organ", "Accordion", "Harmonica", "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2",
    "Choir Aahs", "Voice Oohs", "Synth Voice", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax",
    "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute",
    "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)",
    "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto",
    "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock",
    "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet",
    "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)

# GM program -> (NSynth family, NSynth source). Source follows NSynth's meaning: acoustic =
# a recorded acoustic instrument, electronic = an instrument with an electric pickup or an
# electromechanical sound (electric pianos, tonewheel organs, electric guitars and basses),
# synthetic = a synthesizer. Programs missing from the table (timpani, orchestra hit, the
# synth-effect, percussive and sound-effect groups) have no NSynth family and are left out.
_A, _E, _S = "acoustic", "electronic", "synthetic"
GM_FAMILY: dict[int, tuple[str, str]] = {
    # Piano group; celesta is a keyboard instrument though GM files it with the mallets.
    0: ("keyboard", _A), 1: ("keyboard", _A), 2: ("keyboard", _E), 3: ("keyboard", _A),
    4: ("keyboard", _E), 5: ("keyboard", _E), 6: ("keyboard", _A), 7: ("keyboard", _E),
    8: ("keyboard", _A),
    # Chromatic percussion: struck bars, tubes and (hammered) strings.
    9: ("mallet", _A), 10: ("mallet", _A), 11: ("mallet", _A), 12: ("mallet", _A),
    13: ("mallet", _A), 14: ("mallet", _A), 15: ("mallet", _A),
    # Organs; accordions and harmonica are free reeds, as NSynth files them under reed.
    16: ("organ", _E), 17: ("organ", _E), 18: ("organ", _E), 19: ("organ", _A),
    20: ("organ", _A), 21: ("reed", _A), 22: ("reed", _A), 23: ("reed", _A),
    24: ("guitar", _A), 25: ("guitar", _A), 26: ("guitar", _E), 27: ("guitar", _E),
    28: ("guitar", _E), 29: ("guitar", _E), 30: ("guitar", _E), 31: ("guitar", _E),
    32: ("bass", _A), 33: ("bass", _E), 34: ("bass", _E), 35: ("bass", _E),
    36: ("bass", _E), 37: ("bass", _E), 38: ("bass", _S), 39: ("bass", _S),
    40: ("string", _A), 41: ("string", _A), 42: ("string", _A), 43: ("string", _A),
    44: ("string", _A), 45: ("string", _A), 46: ("string", _A),
    48: ("string", _A), 49: ("string", _A), 50: ("string", _S), 51: ("string", _S),
    52: ("vocal", _A), 53: ("vocal", _A), 54: ("vocal", _S),
    56: ("brass", _A), 57: ("brass", _A), 58: ("brass", _A), 59: ("brass", _A),
    60: ("brass", _A), 61: ("brass", _A), 62: ("brass", _S), 63: ("brass", _S),
    64: ("reed", _A), 65: ("reed", _A), 66: ("reed", _A), 67: ("reed", _A),
    68: ("reed", _A), 69: ("reed", _A), 70: ("reed", _A), 71: ("reed", _A),
    72: ("flute", _A), 73: ("flute", _A), 74: ("flute", _A), 75: ("flute", _A),
    76: ("flute", _A), 77: ("flute", _A), 78: ("flute", _A), 79: ("flute", _A),
    80: ("synth_lead", _S), 81: ("synth_lead", _S), 82: ("synth_lead", _S),
    83: ("synth_lead", _S), 84: ("synth_lead", _S), 85: ("synth_lead", _S),
    86: ("synth_lead", _S), 87: ("synth_lead", _S),
    # Pads are sustained synthesizer tones: NSynth has no pad family, and its synth_lead
    # family holds every kind of synthesizer patch; the choir pad is a (synthetic) voice.
    88: ("synth_lead", _S), 89: ("synth_lead", _S), 90: ("synth_lead", _S),
    91: ("vocal", _S), 92: ("synth_lead", _S), 93: ("synth_lead", _S),
    94: ("synth_lead", _S), 95: ("synth_lead", _S),
    # Ethnic: plucked lutes and zithers are guitars, the kalimba is struck, bagpipe and shanai
    # are reeds, the fiddle is a string.
    104: ("guitar", _A), 105: ("guitar", _A), 106: ("guitar", _A), 107: ("guitar", _A),
    108: ("mallet", _A), 109: ("reed", _A), 110: ("string", _A), 111: ("reed", _A),
    # Tuned percussion only.
    112: ("mallet", _A), 114: ("mallet", _A),
}
LEFT_OUT_PROGRAMS: tuple[int, ...] = tuple(p for p in range(128) if p not in GM_FAMILY)

FLUID_BLOCK = 64  # fluidsynth renders in 64-sample blocks; events land on block starts
NOTE_HOLD_S = 3.0
NOTE_RELEASE_S = 1.0
SPLITS: tuple[str, ...] = ("train", "valid", "test")


def _fluidsynth():  # type: ignore[no-untyped-def]
    try:
        import fluidsynth  # noqa: PLC0415
    except (ImportError, OSError) as e:  # the wheel loads libfluidsynth at import
        raise DataError(f"libfluidsynth is missing ({e}); install it: {APT_HINT}") from e
    return fluidsynth


def _write_float_fn(fs_mod: Any) -> Any:
    """fluid_synth_write_float from the loaded library: float output without the int16
    dither that fluid_synth_write_s16 adds (dither makes repeated renders differ)."""
    fn = fs_mod._fl.fluid_synth_write_float
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class SoundfontRenderer:
    """One fluidsynth Synth with one soundfont loaded, reused for many notes.

    Each render starts from the same state (previous voices killed, position realigned to a
    64-sample block), so a note renders identically whatever was rendered before it.
    """

    def __init__(self, soundfont: str | os.PathLike[str], sample_rate: int = 24000,
                 gain: float = 0.5) -> None:
        path = Path(soundfont)
        if not path.is_file():
            raise DataError(f"soundfont {path} not found; install one: {APT_HINT}")
        self._fs_mod = _fluidsynth()
        self.path = path
        self.sample_rate = int(sample_rate)
        self._lock = threading.Lock()
        # Settings must reach fluidsynth before the synth is created, hence the kwargs.
        off = {"synth.reverb.active": 0, "synth.chorus.active": 0}
        self._fs = self._fs_mod.Synth(samplerate=float(sample_rate), gain=gain, **off)
        self._write = _write_float_fn(self._fs_mod)
        problem = soundfont_problem(path)
        if problem is None:
            from pgesam_live.quiet import quiet_c_stderr  # noqa: PLC0415

            with quiet_c_stderr():  # fluidsynth and glib would print their own lines
                self._sfid = self._fs.sfload(str(path))
            if self._sfid < 0:
                problem = "fluidsynth cannot read it (damaged or an unsupported variant)"
        if problem is not None:
            self._fs.delete()
            raise DataError(f"soundfont {path}: {problem}; give a SoundFont 2 file (.sf2, or "
                            ".sf3), e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2")
        # A fresh synth renders its very first note slightly differently from every later one
        # (measured: 0.0018 on a 0.12 peak); one throw-away note makes all renders alike.
        first = next((p for p in range(128) if self.has_program(p)), None)
        if first is not None:
            self.render(first, 60, 100, hold_s=0.05, release_s=0.05)

    def has_program(self, program: int, bank: int = 0) -> bool:
        """Whether the soundfont holds a preset for (bank, program)."""
        return self.preset_name(program, bank) is not None

    def preset_name(self, program: int, bank: int = 0) -> str | None:
        """The soundfont's own name for (bank, program), or None when it has no such preset."""
        name = self._fs.sfpreset_name(self._sfid, bank, program)
        if name is None:
            return None
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)

    def _render_into(self, n: int) -> np.ndarray:
        """Render n frames: float32 [2, n] (left, right)."""
        out = np.zeros((2, n), dtype=np.float32)
        if n > 0:
            self._write(self._fs.synth, n, out[0].ctypes.data, 0, 1, out[1].ctypes.data, 0, 1)
        return out

    def render(self, program: int, pitch: int, velocity: int = 100,
               hold_s: float = NOTE_HOLD_S, release_s: float = NOTE_RELEASE_S,
               bank: int = 0) -> np.ndarray:
        """One mono note: float32 [N], N = round(hold_s * rate) + round(release_s * rate)."""
        if not 0 <= pitch <= 127 or not 1 <= velocity <= 127:
            raise ConfigError(f"pitch {pitch} / velocity {velocity} out of MIDI range: use "
                              "pitch 0..127 and velocity 1..127")
        with self._lock:
            if self._fs is None:
                raise DataError(f"the renderer for {self.path.name} is closed; make a new "
                                "SoundfontRenderer")
            if self._fs.program_select(0, self._sfid, bank, program) != 0:
                raise DataError(f"{self.path.name} has no preset bank {bank} program {program}; "
                                "choose one it holds")
            n_hold = int(round(hold_s * self.sample_rate))
            n_rel = int(round(release_s * self.sample_rate))
            self._fs.noteon(0, pitch, velocity)
            a = self._render_into(n_hold)
            self._fs.noteoff(0, pitch)
            b = self._render_into(n_rel)
            # Kill the tail and realign to a block start so the next noteon lands on sample 0.
            self._fs.all_sounds_off(0)
            self._render_into((-(n_hold + n_rel)) % FLUID_BLOCK + FLUID_BLOCK)
        st = np.concatenate([a, b], axis=1)
        return (0.5 * (st[0] + st[1])).astype(np.float32)

    def close(self) -> None:
        """Free the synth (and the soundfont's samples)."""
        with self._lock:
            if self._fs is not None:
                self._fs.delete()
                self._fs = None

    def __enter__(self) -> SoundfontRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# render_note keeps the last few soundfonts open: loading one costs 0.17 s, a note ~2 ms.
_RENDERERS: OrderedDict[tuple[str, int], SoundfontRenderer] = OrderedDict()
_RENDERERS_MAX = 2
_RENDERERS_LOCK = threading.Lock()


def _renderer(soundfont: str, sample_rate: int) -> SoundfontRenderer:
    key = (str(Path(soundfont).resolve()), int(sample_rate))
    with _RENDERERS_LOCK:
        r = _RENDERERS.get(key)
        if r is not None:
            _RENDERERS.move_to_end(key)
            return r
        r = SoundfontRenderer(soundfont, sample_rate)
        _RENDERERS[key] = r
        while len(_RENDERERS) > _RENDERERS_MAX:
            _, old = _RENDERERS.popitem(last=False)
            old.close()
        return r


def clear_render_cache() -> None:
    """Close the soundfonts render_note keeps open (frees their samples' memory)."""
    with _RENDERERS_LOCK:
        while _RENDERERS:
            _RENDERERS.popitem()[1].close()


def render_note(soundfont: str, program: int, pitch: int, velocity: int = 100,
                sample_rate: int = 24000, hold_s: float = 3.0, release_s: float = 1.0,
                bank: int = 0) -> np.ndarray:
    """One mono note, reverb and chorus off: float32 [N], N = (hold_s + release_s) * rate."""
    return _renderer(soundfont, sample_rate).render(program, pitch, velocity, hold_s,
                                                     release_s, bank)


# ---------------------------------------------------------------------------------------------
# The data set


def parse_pitches(text: str) -> list[int]:
    """'36-84' (inclusive) or '48,60,72' or a mix ('36-40,60'), MIDI numbers or note names
    ('C2-C6', 'C4,E4,G4') -> sorted MIDI pitches."""
    out: set[int] = set()
    try:
        for part in str(text).replace(" ", "").split(","):
            if not part:
                continue
            span = parse_pitch_span(part)
            if span is not None:
                lo, hi = span
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(parse_pitch(part))
    except (ValueError, NoteError) as e:
        raise ConfigError(f"bad --pitches {text!r}: write a range like 36-84 or C2-C6, or a "
                          "list like 48,60,72") from e
    if not out or min(out) < 0 or max(out) > 127:
        raise ConfigError(f"bad --pitches {text!r}: give MIDI pitches within 0..127")
    return sorted(out)


def parse_velocities(text: str) -> list[int]:
    """'100' or '25,50,100,127' -> sorted MIDI velocities."""
    try:
        vals = sorted({int(v) for v in str(text).replace(" ", "").split(",") if v})
    except ValueError as e:
        raise ConfigError(f"bad --velocities {text!r}: write a comma list like 100 or "
                          "50,100") from e
    if not vals or vals[0] < 1 or vals[-1] > 127:
        raise ConfigError(f"bad --velocities {text!r}: give MIDI velocities within 1..127")
    return vals


def soundfont_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` is not a SoundFont (a RIFF file of form 'sfbk'), or None when it is one."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        return "not a SoundFont file (no RIFF 'sfbk' header)"
    return None


def soundfont_stem(path: str | os.PathLike[str]) -> str:
    """The instrument_str prefix of a soundfont: its file stem, lowercased, [a-z0-9_] only."""
    return re.sub(r"[^a-z0-9]+", "_", Path(path).stem.lower()).strip("_") or "soundfont"


def silence_reason(wave: np.ndarray, sample_rate: int, *, min_peak: float = 1e-4,
                   min_sounding_s: float = 0.05) -> str | None:
    """Why a rendered note does not count as sounding, or None if it does.

    wave: float32 [N]. 'silent' when the peak is below `min_peak`; 'mostly silent' when the
    10 ms frames within 40 dB of the loudest frame add up to less than `min_sounding_s`
    (a click, or a key the preset barely covers).
    """
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak < min_peak:
        return "silent"
    hop = max(1, int(sample_rate * 0.01))
    n = wave.size // hop
    if n == 0:
        return "mostly silent"
    rms = np.sqrt(np.mean(wave[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    sounding = int(np.sum(rms >= max(min_peak, 0.01 * float(rms.max()))))
    if sounding * hop / sample_rate < min_sounding_s:
        return "mostly silent"
    return None


@dataclass(frozen=True)
class InstrumentInfo:
    """One soundfont program that became an instrument of the data set."""

    instrument_str: str
    program: int
    family_str: str
    source_str: str
    soundfont: str
    preset_name: str


def assign_splits(instruments: Iterable[tuple[str, str, str]], seed: int = 0,
                  fractions: tuple[float, float] = (0.1, 0.1)) -> dict[str, str]:
    """Split instruments by group, about 80/10/10 within each family, deterministic for a seed.

    instruments: (instrument_str, family_str, group) triples. Instruments sharing a group (the
    same GM program from several soundfonts, often built from the same samples) always land in
    the same split, so a test instrument has no near-twin in training. Within each family the
    sorted groups are shuffled by a seed-and-family RNG; valid and test take round(10 %) each,
    at least one each when the family has >= 3 groups. Returns instrument_str -> split name.
    """
    by_family: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for inst, fam, group in instruments:
        by_family[fam][group].append(inst)
    out: dict[str, str] = {}
    for fam in sorted(by_family):
        groups = sorted(by_family[fam])
        random.Random(f"{seed}:{fam}").shuffle(groups)
        n = len(groups)
        n_valid = int(round(fractions[0] * n))
        n_test = int(round(fractions[1] * n))
        if n >= 3:
            n_valid, n_test = max(1, n_valid), max(1, n_test)
        for i, g in enumerate(groups):
            split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
            for inst in by_family[fam][g]:
                out[inst] = split
    return out


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, unit="note", mininterval=1.0, dynamic_ncols=True)


def build_dataset(soundfonts: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                  pitches: Sequence[int], velocities: Sequence[int] = (100,), seed: int = 0,
                  sample_rate: int = 24000, programs: Sequence[int] | None = None,
                  hold_s: float = NOTE_HOLD_S, release_s: float = NOTE_RELEASE_S,
                  progress: bool = True) -> dict[str, Any]:
    """Render an NSynth-format data set into `out`; return the report (also in report.json).

    Layout: out/nsynth-{train,valid,test}/examples.json and audio/<note_str>.wav (16-bit PCM,
    mono, `sample_rate`). `programs` restricts the GM programs (default: every program with a
    family in GM_FAMILY). Notes that do not sound are dropped and listed in the report.
    """
    t0 = time.perf_counter()
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a folder for the data set")
    if any((out_dir / f"nsynth-{s}").exists() for s in SPLITS):
        raise DataError(f"{out_dir} already holds a data set; choose another --out or delete "
                        "its nsynth-* folders")
    paths = [Path(p) for p in soundfonts]
    if not paths:
        raise ConfigError("no soundfont given: pass --soundfont PATH [PATH ...]")
    for p in paths:
        if p.is_dir():
            inside = sorted(q.name for q in p.glob("*.sf[23]"))[:4]
            raise ConfigError(f"soundfont {p} is a folder: give the files in it"
                              + (f" ({', '.join(inside)})" if inside else ""))
        if not p.is_file():
            raise DataError(f"soundfont {p} not found; install the Debian soundfonts: {APT_HINT}")
        problem = soundfont_problem(p)
        if problem is not None:
            raise DataError(f"soundfont {p}: {problem}; give a SoundFont 2 file (.sf2, or "
                            ".sf3), e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2")
    stems = [soundfont_stem(p) for p in paths]
    dup = [s for s, c in Counter(stems).items() if c > 1]
    if dup:
        raise ConfigError(f"two soundfonts share the name {dup[0]!r}: rename or copy one so "
                          "their file stems differ")
    progs = sorted(set(GM_FAMILY) if programs is None else set(programs))
    unknown = [p for p in progs if p not in GM_FAMILY]
    if unknown:
        raise ConfigError(f"programs {unknown} have no NSynth family; choose from "
                          f"{sorted(GM_FAMILY)}")
    _fluidsynth()  # fail early, with the apt hint, before creating anything
    for path in paths:  # a soundfont with none of the programs fails before any rendering
        with SoundfontRenderer(path, sample_rate) as r:
            if not any(r.has_program(prog) for prog in progs):
                raise DataError(
                    f"soundfont {path} has none of the General MIDI programs asked for in bank 0 "
                    "(a GS/XG variation bank or a drum kit holds none): give a General MIDI "
                    "soundfont, e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2")

    stage = out_dir / ".staging"
    if stage.exists():
        shutil.rmtree(stage)  # a previous run that was interrupted
    (stage / "audio").mkdir(parents=True)

    pitches = sorted(set(int(p) for p in pitches))
    velocities = sorted(set(int(v) for v in velocities))
    per_prog = len(pitches) * len(velocities)
    bar = _progress(len(paths) * len(progs) * per_prog, progress, "rendering")
    instruments: list[InstrumentInfo] = []
    kept: dict[str, list[tuple[str, int, int]]] = defaultdict(list)  # inst -> notes
    dropped: list[dict[str, Any]] = []
    missing: dict[str, list[int]] = {}
    clipped = 0
    import soundfile as sf  # noqa: PLC0415

    try:
        # Interrupted (Ctrl-C) or failed: nothing half-made is left behind.
        for path, stem in zip(paths, stems, strict=True):
            if bar is not None:
                bar.set_postfix_str(path.name)
            with SoundfontRenderer(path, sample_rate) as r:
                missing[stem] = []
                for prog in progs:
                    name = r.preset_name(prog)
                    if name is None:
                        missing[stem].append(prog)
                        if bar is not None:
                            bar.update(per_prog)
                        continue
                    fam, src = GM_FAMILY[prog]
                    inst = f"{stem}_{prog:03d}"
                    instruments.append(InstrumentInfo(inst, prog, fam, src, path.name, name))
                    for pitch in pitches:
                        for vel in velocities:
                            wave = r.render(prog, pitch, vel, hold_s, release_s)
                            note_str = f"{inst}-{pitch:03d}-{vel:03d}"
                            why = silence_reason(wave, sample_rate)
                            if why is not None:
                                dropped.append({"note_str": note_str, "reason": why,
                                                "peak": float(np.max(np.abs(wave)))})
                            else:
                                if float(np.max(np.abs(wave))) >= 1.0:
                                    clipped += 1
                                sf.write(stage / "audio" / f"{note_str}.wav", wave,
                                         sample_rate, subtype="PCM_16")
                                kept[inst].append((note_str, pitch, vel))
                            if bar is not None:
                                bar.update(1)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()

    # Instruments with no sounding note at all are not instruments of the set.
    live = [i for i in instruments if kept[i.instrument_str]]
    if not live:
        shutil.rmtree(stage, ignore_errors=True)
        raise DataError(f"no note sounded ({len(dropped)} rendered, all silent): try other "
                        "--pitches or --velocities, or another soundfont")
    split_of = assign_splits(((i.instrument_str, i.family_str, f"program_{i.program:03d}")
                              for i in live), seed=seed)
    inst_id = {name: k for k, name in enumerate(sorted(i.instrument_str for i in live))}
    examples: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in SPLITS}
    note_id = 0  # unique over the whole set, as NSynth's
    for s in SPLITS:
        (stage / f"nsynth-{s}" / "audio").mkdir(parents=True)
    for info in live:
        split = split_of[info.instrument_str]
        for note_str, pitch, vel in kept[info.instrument_str]:
            os.replace(stage / "audio" / f"{note_str}.wav",
                       stage / f"nsynth-{split}" / "audio" / f"{note_str}.wav")
            examples[split][note_str] = {
                "note": note_id,
                "note_str": note_str,
                "pitch": pitch,
                "velocity": vel,
                "instrument": inst_id[info.instrument_str],
                "instrument_str": info.instrument_str,
                "instrument_family": FAMILIES.index(info.family_str),
                "instrument_family_str": info.family_str,
                "instrument_source": SOURCES.index(info.source_str),
                "instrument_source_str": info.source_str,
                "sample_rate": sample_rate,
                "qualities": [0] * 10,
                "qualities_str": [],
            }
            note_id += 1
    for s in SPLITS:
        with open(stage / f"nsynth-{s}" / "examples.json", "w") as f:
            json.dump(examples[s], f, indent=1)
        os.replace(stage / f"nsynth-{s}", out_dir / f"nsynth-{s}")
    shutil.rmtree(stage)

    fam_counts = {s: {fam: 0 for fam in FAMILIES} for s in SPLITS}
    for info in live:
        fam_counts[split_of[info.instrument_str]][info.family_str] += 1
    dead = sorted(i.instrument_str for i in instruments if not kept[i.instrument_str])
    by_reason = Counter(d["reason"] for d in dropped)
    report: dict[str, Any] = {
        "soundfonts": [str(p) for p in paths],
        "sample_rate": sample_rate,
        "pitches": pitches,
        "velocities": velocities,
        "seed": seed,
        "note_duration_s": hold_s + release_s,
        "instruments": len(live),
        "instruments_per_family": {fam: sum(fam_counts[s][fam] for s in SPLITS)
                                   for fam in FAMILIES},
        "instruments_per_split_family": fam_counts,
        "notes_rendered": sum(len(v) for v in kept.values()) + len(dropped),
        "notes_kept": sum(len(v) for v in kept.values()),
        "notes_per_split": {s: len(examples[s]) for s in SPLITS},
        "notes_dropped": len(dropped),
        "dropped_by_reason": dict(by_reason),
        "dropped_per_instrument": dict(Counter(d["note_str"].rsplit("-", 2)[0]
                                               for d in dropped)),
        "dropped": dropped,
        "instruments_without_sound": dead,
        "notes_clipped": clipped,
        "programs_missing_in_soundfont": {k: v for k, v in missing.items() if v},
        "left_out_programs": [{"program": p, "name": GM_NAMES[p]} for p in LEFT_OUT_PROGRAMS],
        "split_of_program": {f"{i.program:03d}": split_of[i.instrument_str] for i in live},
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    with open(out_dir / "report.json", "w") as f:
        json.dump(report, f, indent=1)
    text = format_report(report)
    (out_dir / "report.txt").write_text(text)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A short human summary of a build_dataset report."""
    lines = [
        f"NSynth-format set from {', '.join(Path(s).name for s in report['soundfonts'])}: "
        f"{report['instruments']} instruments, {report['notes_kept']} notes kept of "
        f"{report['notes_rendered']} rendered in {report['elapsed_s']} s",
        "notes per split: " + ", ".join(f"{s} {n}" for s, n in report["notes_per_split"].items()),
        f"dropped {report['notes_dropped']} notes that do not sound "
        f"({', '.join(f'{k} {v}' for k, v in report['dropped_by_reason'].items()) or 'none'})",
        f"{'family':<11} " + " ".join(f"{s:>6}" for s in SPLITS),
    ]
    per = report["instruments_per_split_family"]
    for fam in FAMILIES:
        lines.append(f"{fam:<11} " + " ".join(f"{per[s][fam]:>6}" for s in SPLITS))
    if report["instruments_without_sound"]:
        lines.append("instruments with no sounding note: "
                     + ", ".join(report["instruments_without_sound"]))
    if report["notes_clipped"]:
        lines.append(f"{report['notes_clipped']} notes reach full scale (clipped in the wav)")
    left = report["left_out_programs"]
    lines.append(f"{len(left)} GM programs without an NSynth family left out: "
                 + ", ".join(str(p["program"]) for p in left))
    return "\n".join(lines) + "\n"


def run_dataset_soundfont(ns: argparse.Namespace) -> int:
    """`pgesam-live dataset soundfont`: render the set, print the summary, return 0."""
    report = build_dataset(ns.soundfont, ns.out, pitches=parse_pitches(ns.pitches),
                           velocities=parse_velocities(ns.velocities), seed=int(ns.seed),
                           sample_rate=int(ns.sample_rate))
    print(format_report(report), end="")
    print(f"written to {ns.out} (report.json has the details)")
    return 0
