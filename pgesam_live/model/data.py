"""NSynth-format data: read the real layout, apply the authors' filters, encode to frames once.

Layout (real NSynth and `pgesam-live dataset soundfont` alike):
`ROOT/nsynth-{train,valid,test}/examples.json` (note_str -> pitch, velocity, instrument,
instrument_str, instrument_family(_str), instrument_source(_str), sample_rate, qualities) and
`ROOT/nsynth-<split>/audio/<note_str>.wav` at any sample rate.

`load_frames` encodes the selected notes with a codec and caches the frames on disk under
`ROOT/.pgesam-cache/<codec name>-<codec config hash>/<split>-<filter hash>.pt`, keyed by a
size/mtime fingerprint of examples.json and every selected wav, so a data set is encoded once
per codec and re-encoded only when its files change.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import random
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgesam_live.errors import DataError
from pgesam_live.model.codec import Codec
from pgesam_live.model.soundfont import FAMILIES, SOURCES

__all__ = ["FAMILIES", "SOURCES", "SPLITS", "NoteRecord", "FrameSet", "read_split",
           "filter_notes", "load_frames", "load_audio", "codec_fingerprint", "midi_to_hz",
           "encode_notes", "instrument_means", "instrument_points"]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
CACHE_DIRNAME = ".pgesam-cache"
CACHE_VERSION = 1
_FIX = ("point --data at a folder holding nsynth-{train,valid,test}/, or render one with "
        "`pgesam-live dataset soundfont --soundfont PATH --out DIR`")


@dataclass(frozen=True)
class NoteRecord:
    """One note of an NSynth-format split (the examples.json fields plus where its wav is)."""

    note_str: str
    pitch: int
    velocity: int
    instrument: int
    instrument_str: str
    family: int
    family_str: str
    source: int
    source_str: str
    sample_rate: int
    qualities: tuple[int, ...]
    split: str
    path: Path


@dataclass
class FrameSet:
    """Encoded notes, ready for training.

    frames [N, T, D] float32 (normalised codec frames); pitch [N] long (MIDI);
    family [N] long (index into FAMILIES); instrument [N] long (index into instrument_names,
    which is the sorted list of the selected instrument_str, so a model can map back).
    """

    frames: torch.Tensor
    pitch: torch.Tensor
    family: torch.Tensor
    instrument: torch.Tensor
    instrument_names: list[str]
    notes: list[NoteRecord]
    codec_name: str
    frame_rate_hz: float
    family_names: tuple[str, ...] = field(default=FAMILIES)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def midi_to_hz(pitch: torch.Tensor | float) -> torch.Tensor:
    """MIDI pitch (A4 = 69 = 440 Hz) -> f0 in Hz; [B] -> [B] float32."""
    p = torch.as_tensor(pitch, dtype=torch.float32)
    return 440.0 * torch.pow(2.0, (p - 69.0) / 12.0)


# ---------------------------------------------------------------------------------------------
# Reading


def _split_dirs(split: str) -> tuple[str, ...]:
    if split == "all":
        return SPLITS
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose train, valid, test or all")
    return (split,)


def _record(note_key: str, ex: dict[str, Any], split: str, audio_dir: Path,
            json_path: Path) -> NoteRecord:
    try:
        note_str = str(ex.get("note_str", note_key))
        fam_str = ex.get("instrument_family_str")
        fam = FAMILIES.index(fam_str) if fam_str in FAMILIES else int(ex["instrument_family"])
        if not 0 <= fam < len(FAMILIES):
            raise ValueError(f"instrument_family {fam}")
        src_str = ex.get("instrument_source_str")
        src = SOURCES.index(src_str) if src_str in SOURCES else int(ex.get("instrument_source",
                                                                           0))
        return NoteRecord(
            note_str=note_str, pitch=int(ex["pitch"]), velocity=int(ex["velocity"]),
            instrument=int(ex["instrument"]), instrument_str=str(ex["instrument_str"]),
            family=fam, family_str=FAMILIES[fam], source=src,
            source_str=SOURCES[src] if 0 <= src < len(SOURCES) else str(src),
            sample_rate=int(ex.get("sample_rate", 16000)),
            qualities=tuple(int(q) for q in ex.get("qualities", ())),
            split=split, path=audio_dir / f"{note_str}.wav")
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{json_path}: note {note_key!r} has a missing or bad field ({e}); "
                        "each note needs pitch, velocity, instrument, instrument_str and "
                        "instrument_family") from e


def read_split(root: str | os.PathLike[str], split: str) -> list[NoteRecord]:
    """All notes of one split ('train', 'valid', 'test', or 'all' = the three concatenated),
    sorted by note_str within each split. Raises DataError naming a missing or bad examples.json.
    """
    root_p = Path(root)
    out: list[NoteRecord] = []
    for s in _split_dirs(split):
        d = root_p / f"nsynth-{s}"
        jp = d / "examples.json"
        if not jp.is_file():
            raise DataError(f"{jp} is missing: {_FIX}")
        try:
            with open(jp) as f:
                examples = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{jp} cannot be read as JSON ({e}); re-render or re-download "
                            "the data set") from e
        if not isinstance(examples, dict):
            raise DataError(f"{jp} is not an NSynth examples.json (expected an object of "
                            "note_str -> fields); re-render or re-download the data set")
        out.extend(_record(k, examples[k], s, d / "audio", jp) for k in sorted(examples))
    return out


def filter_notes(notes: Iterable[NoteRecord], *,
                 pitch_range: tuple[int, int] | None = None,
                 velocities: Iterable[int] | None = None,
                 max_instruments_per_family: int | None = None,
                 families: Iterable[str] | None = None,
                 seed: int = 0) -> list[NoteRecord]:
    """The authors' filters: MIDI pitch in `pitch_range` (inclusive), velocity in
    `velocities`, family in `families`, then at most `max_instruments_per_family` instruments
    per family, chosen among the instruments left after the other filters by a seed-and-family
    RNG over their sorted names (deterministic; the same seed keeps the same instruments).
    """
    vel = None if velocities is None else {int(v) for v in velocities}
    fams = None if families is None else set(families)
    bad = sorted(fams - set(FAMILIES)) if fams is not None else []
    if bad:
        raise DataError(f"unknown families {bad}: choose from {', '.join(FAMILIES)}")
    kept = [n for n in notes
            if (pitch_range is None or pitch_range[0] <= n.pitch <= pitch_range[1])
            and (vel is None or n.velocity in vel)
            and (fams is None or n.family_str in fams)]
    if max_instruments_per_family is None:
        return kept
    if max_instruments_per_family < 1:
        raise DataError(f"max_instruments_per_family={max_instruments_per_family}: use >= 1 "
                        "or None for no limit")
    per_fam: dict[str, set[str]] = defaultdict(set)
    for n in kept:
        per_fam[n.family_str].add(n.instrument_str)
    chosen: set[str] = set()
    for fam, insts in per_fam.items():
        names = sorted(insts)
        if len(names) > max_instruments_per_family:
            names = random.Random(f"{seed}:{fam}").sample(names, max_instruments_per_family)
        chosen.update(names)
    return [n for n in kept if n.instrument_str in chosen]


def load_audio(path: str | os.PathLike[str], sample_rate: int,
               n_samples: int | None = None) -> np.ndarray:
    """A wav as mono float32 [N] at `sample_rate` (polyphase resampling), padded with zeros or
    trimmed to `n_samples` when given. Raises DataError naming a missing or unreadable file."""
    import soundfile as sf  # noqa: PLC0415
    from scipy.signal import resample_poly  # noqa: PLC0415

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} is listed in examples.json but missing; re-render or "
                        "re-download the data set")
    try:
        wave, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, sf.LibsndfileError) as e:
        raise DataError(f"{p} is not a readable audio file ({e}); re-render or re-download "
                        "the data set") from e
    x = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if sr != sample_rate:
        g = math.gcd(int(sr), int(sample_rate))
        x = resample_poly(x, sample_rate // g, int(sr) // g).astype(np.float32)
    if n_samples is not None:
        if x.shape[0] >= n_samples:
            x = x[:n_samples]
        else:
            x = np.pad(x, (0, n_samples - x.shape[0]))
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Cache keys


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def codec_fingerprint(codec: Codec) -> str:
    """A short hash of everything that decides a codec's frames.

    A codec may define `cache_key() -> str` (preferred: it knows what matters). Otherwise the
    hash covers the class, name, rate, frame rate, dim, the source file that defines the codec
    (an edited algorithm must not reuse old frames), its plain class constants, every plain
    instance attribute (numbers, strings, tuples) and the bytes of every tensor or module
    state it holds, so new weights, code or settings give a new cache folder. Instance
    attributes whose name starts with '_' are runtime state (counters) and are left out.
    """
    key_fn = getattr(codec, "cache_key", None)
    if callable(key_fn):
        return _hash(["cache_key", type(codec).__qualname__, str(key_fn())])
    h = hashlib.sha1()
    h.update(f"{type(codec).__module__}.{type(codec).__qualname__}".encode())
    h.update(repr((codec.name, codec.sample_rate, codec.frame_rate_hz, codec.dim)).encode())

    try:
        src = inspect.getsourcefile(type(codec))
        if src is not None:
            h.update(Path(src).read_bytes())
    except (OSError, TypeError):
        pass  # a class without a source file (built at run time): its attributes still count
    for klass in reversed(type(codec).__mro__):
        for k, v in sorted(vars(klass).items()):
            if not k.startswith("__") and isinstance(v, bool | int | float | str | tuple):
                h.update(f"{klass.__name__}.{k}={v!r};".encode())

    def add_tensor(name: str, t: torch.Tensor) -> None:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())

    for k in sorted(vars(codec)):
        if k.startswith("_"):
            continue
        v = vars(codec)[k]
        if isinstance(v, bool | int | float | str | type(None)) or (
                isinstance(v, tuple | list)
                and all(isinstance(e, bool | int | float | str) for e in v)):
            h.update(f"{k}={v!r};".encode())
        elif isinstance(v, torch.Tensor):
            add_tensor(k, v)
        elif isinstance(v, torch.nn.Module):
            for name, t in sorted(v.state_dict().items()):
                add_tensor(f"{k}.{name}", t)
    return h.hexdigest()[:12]


def _fingerprint(root: Path, split: str, notes: Sequence[NoteRecord]) -> str:
    """Size and mtime of the examples.json files and of every selected wav."""
    items: list[Any] = []
    for s in _split_dirs(split):
        st = (root / f"nsynth-{s}" / "examples.json").stat()
        items.append([s, st.st_size, st.st_mtime_ns])
    for n in notes:
        try:
            st = n.path.stat()
        except FileNotFoundError as e:
            raise DataError(f"{n.path} is listed in examples.json but missing; re-render or "
                            "re-download the data set") from e
        items.append([n.note_str, st.st_size, st.st_mtime_ns])
    return _hash(items)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_notes(codec: Codec, wave: torch.Tensor, pitches: Sequence[int]) -> torch.Tensor:
    """Notes' audio [B, N] at the codec's rate and their MIDI pitches (B) -> frames [B, T, D]
    float32 on the CPU, as the data set is encoded: the codec's f0 search guided by each
    note's pitch when its encode takes a hint (harmonic codecs; EnCodec takes none)."""
    try:
        params = inspect.signature(codec.encode).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    device = getattr(codec, "device", None)
    if device is not None:
        wave = wave.to(device)
    with torch.no_grad():
        if "f0_hint_hz" in params:
            f0 = midi_to_hz(torch.tensor(list(pitches)))
            if device is not None:
                f0 = f0.to(device)
            frames = codec.encode(wave, f0_hint_hz=f0)  # type: ignore[call-arg]
        else:
            frames = codec.encode(wave)
    if frames.ndim != 3 or frames.shape[0] != len(pitches):
        raise DataError(f"codec {codec.name!r} returned frames of shape "
                        f"{tuple(frames.shape)} for {len(pitches)} notes; it must return "
                        "[B, T, D]: fix the codec")
    return frames.detach().to("cpu", torch.float32)


def _encode_all(notes: Sequence[NoteRecord], codec: Codec, n_samples: int, batch_size: int,
                progress: bool) -> torch.Tensor:
    """Encode every note's audio: frames [N, T, D] float32 on the CPU."""
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(notes), desc=f"encoding ({codec.name})", unit="note",
                   mininterval=1.0, dynamic_ncols=True)
    chunks: list[torch.Tensor] = []
    try:
        for i in range(0, len(notes), batch_size):
            batch = notes[i:i + batch_size]
            wave = torch.from_numpy(np.stack([load_audio(n.path, codec.sample_rate, n_samples)
                                              for n in batch]))
            chunks.append(encode_notes(codec, wave, [n.pitch for n in batch]))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return torch.cat(chunks, dim=0)


def instrument_points(mu: torch.Tensor, instrument: torch.Tensor, n: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-note VAE means mu [N, 2] and instrument ids [N] -> each instrument's mean point
    [n, 2] (the training point it plays at; 0 where it has no notes) and its note count [n]
    (n: the number of instruments, default the largest id + 1)."""
    if n is None:
        n = int(instrument.max()) + 1 if instrument.numel() else 0
    sums = torch.zeros(n, 2, device=mu.device, dtype=mu.dtype).index_add_(0, instrument, mu)
    counts = torch.bincount(instrument, minlength=n)
    return sums / counts.clamp_min(1).to(mu.dtype)[:, None], counts


def instrument_means(mu: torch.Tensor, instrument: torch.Tensor) -> torch.Tensor:
    """Per-note VAE means mu [N, 2] and instrument ids [N] -> [N, 2]: each note's
    instrument's mean point (instrument_points, per note)."""
    return instrument_points(mu, instrument)[0][instrument]


def notes_duration_s(n_frames: int, frame_rate_hz: float) -> float:
    """How long a note `load_frames` reads for a model of `n_frames` frames: real configs
    whole 4 s notes (so the VAE, the Transformer, eval and the spectral memory share one
    frame cache); tiny test configs only the fraction of each note they read."""
    return 4.0 if n_frames >= frame_rate_hz else n_frames / frame_rate_hz + 0.1


def load_frames(root: str | os.PathLike[str], split: str, codec: Codec, *,
                pitch_range: tuple[int, int] | None = None,
                velocities: Iterable[int] | None = None,
                max_instruments_per_family: int | None = None,
                n_frames: int | None = None, seed: int = 0, cache: bool = True,
                progress: bool = True, duration_s: float = 4.0, batch_size: int = 16,
                cache_dtype: torch.dtype = torch.float32,
                cache_dir: str | os.PathLike[str] | None = None) -> FrameSet:
    """Read, filter and encode a split: a FrameSet with frames [N, T, D] float32.

    Every note is resampled to the codec's rate and padded/trimmed to `duration_s`, then
    encoded in batches of `batch_size`; the codec gets each note's MIDI pitch as
    `f0_hint_hz` [B] when its encode accepts that argument. `n_frames` keeps the first frames
    (the cache holds whole notes, so the VAE's 150 and the Transformer's 300 share it).
    The cache lives in `cache_dir` (default: $PGESAM_FRAME_CACHE, else ROOT/.pgesam-cache)
    and stores `cache_dtype`.
    """
    root_p = Path(root)
    selected = filter_notes(read_split(root_p, split), pitch_range=pitch_range,
                            velocities=velocities,
                            max_instruments_per_family=max_instruments_per_family, seed=seed)
    if not selected:
        raise DataError(f"no note of {root_p} split {split!r} passes the filters (pitch range "
                        f"{pitch_range}, velocities {velocities}); widen them or check the "
                        "data set")
    n_samples = int(round(duration_s * codec.sample_rate))
    names = sorted({n.instrument_str for n in selected})
    filt = {"split": split, "pitch_range": list(pitch_range) if pitch_range else None,
            "velocities": sorted(int(v) for v in velocities) if velocities is not None else None,
            "max_instruments_per_family": max_instruments_per_family, "seed": seed,
            "duration_s": duration_s}
    fp = _fingerprint(root_p, split, selected)
    env_dir = os.environ.get("PGESAM_FRAME_CACHE")
    base = Path(cache_dir) if cache_dir is not None else \
        Path(env_dir) if env_dir else root_p / CACHE_DIRNAME
    cache_path = (base / _safe_name(f"{codec.name}-{codec_fingerprint(codec)}")
                  / f"{split}-{_hash(filt)}.pt")

    frames: torch.Tensor | None = None
    if cache and cache_path.is_file():
        try:
            blob = torch.load(cache_path, map_location="cpu", weights_only=True)
            if (blob.get("version") == CACHE_VERSION and blob.get("fingerprint") == fp
                    and blob.get("note_strs") == [n.note_str for n in selected]):
                frames = blob["frames"].to(torch.float32)
        except Exception as e:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            warnings.warn(f"frame cache {cache_path} unreadable ({e}); re-encoding",
                          stacklevel=2)
    if frames is None:
        frames = _encode_all(selected, codec, n_samples, batch_size, progress)
        if cache:
            try:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
                torch.save({"version": CACHE_VERSION, "fingerprint": fp, "filter": filt,
                            "codec": codec.name, "frame_rate_hz": codec.frame_rate_hz,
                            "note_strs": [n.note_str for n in selected],
                            "instrument_names": names,
                            "frames": frames.to(cache_dtype)}, tmp)
                os.replace(tmp, cache_path)  # readers never see a half-written file
            except OSError as e:
                warnings.warn(f"cannot write the frame cache {cache_path} ({e.strerror or e}): "
                              "the notes are encoded again on every run; set "
                              "PGESAM_FRAME_CACHE to a writable folder to keep them",
                              stacklevel=2)
            if cache_dtype != torch.float32:
                frames = frames.to(cache_dtype).to(torch.float32)  # same values as a reload
    if n_frames is not None:
        if frames.shape[1] < n_frames:
            raise DataError(f"notes give {frames.shape[1]} frames, fewer than n_frames="
                            f"{n_frames}; lower n_frames or raise duration_s")
        frames = frames[:, :n_frames]
    index = {name: i for i, name in enumerate(names)}
    return FrameSet(
        frames=frames.contiguous(),
        pitch=torch.tensor([n.pitch for n in selected], dtype=torch.long),
        family=torch.tensor([n.family for n in selected], dtype=torch.long),
        instrument=torch.tensor([index[n.instrument_str] for n in selected], dtype=torch.long),
        instrument_names=names, notes=selected, codec_name=codec.name,
        frame_rate_hz=float(codec.frame_rate_hz))
