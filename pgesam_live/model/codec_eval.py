"""A codec's own round trip on an NSynth-format set, no model needed:
`pgesam-live eval --codec-only NAME [NAME ...] --data DIR --split S [--json] [--max-notes N]`.

For each codec, on the same deterministic subsample of the split's notes (each encoded with its
MIDI pitch as the f0 hint, as the frame caches are), the JSON gives:
- `pitch_within_50c_codec`: share of notes whose round trip PESTO reads within 50 cents of
  PESTO's reading of the original (the model eval's definition), `pitch_within_50c_codec_yin`
  the same by YIN, and `pitch_by_family` (family -> that share by PESTO);
- `mrstft_codec`: mean MR-STFT distance of the round trip to the original (metrics.py), with
  its 90th percentile and worst note;
- `onset_error_ms`: |half-peak time of the round trip - the original's| over the plucked and
  struck families (guitar, keyboard, mallet, bass): median, max and the share within 15 ms;
- `decode_x_realtime` (and `encode_x_realtime`): seconds of audio per second of decoding;
- `pitch_misses`: instrument -> [misses, notes] by PESTO.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgesam_live.errors import DataError
from pgesam_live.model import metrics
from pgesam_live.model.codec import Codec, get_codec
from pgesam_live.model.data import NoteRecord, load_audio, midi_to_hz, read_split

PLUCKED_FAMILIES = ("guitar", "keyboard", "mallet", "bass")
DURATION_S = 4.0
DEFAULT_MAX_NOTES = 200
BATCH = 8


def _subsample(n: int, k: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic subsample of k of n notes (all when k >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False))


def _pesto_or_nan(wave: np.ndarray, sample_rate: int) -> float:
    try:
        return metrics.track_pitch_pesto(wave, sample_rate)
    except Exception:  # a silent or degenerate round trip counts as a miss
        return math.nan


def _yin_or_nan(wave: np.ndarray, sample_rate: int, lo: float, hi: float) -> float:
    try:
        return metrics.track_pitch(wave, sample_rate, lo, hi)
    except Exception:
        return math.nan


def within_cents(a_hz: float, b_hz: float, limit: float = 50.0) -> bool:
    """Whether two readings lie within `limit` cents; a missing reading (NaN, <= 0) never."""
    if not (a_hz > 0 and b_hz > 0):  # False for NaN too
        return False
    return abs(metrics.cents(a_hz, b_hz)) <= limit


def round_trip(codec: Codec, waves: np.ndarray, pitches: list[int]) -> tuple[np.ndarray,
                                                                           float, float]:
    """waves [B, N] -> (round trip [B, N], encode seconds, decode seconds)."""
    x = torch.from_numpy(waves)
    t0 = time.perf_counter()
    try:
        frames = codec.encode(x, f0_hint_hz=midi_to_hz(torch.tensor(pitches)))  # type: ignore[call-arg]
    except TypeError:
        frames = codec.encode(x)
    t1 = time.perf_counter()
    with torch.inference_mode():
        y = codec.decode(frames)
    t2 = time.perf_counter()
    out = y.float().cpu().numpy()[:, : waves.shape[1]]
    if out.shape[1] < waves.shape[1]:
        out = np.pad(out, ((0, 0), (0, waves.shape[1] - out.shape[1])))
    return out, t1 - t0, t2 - t1


def evaluate_codecs(names: list[str], data_dir: str | Path, split: str = "test",
                    max_notes: int | None = DEFAULT_MAX_NOTES, seed: int = 0,
                    progress: bool = True) -> dict[str, Any]:
    """The round-trip figures of each codec in `names` on one subsample of `split`."""
    notes: list[NoteRecord] = read_split(data_dir, split)
    if not notes:
        raise DataError(f"{data_dir}: split {split!r} has no notes; choose another --split")
    idx = _subsample(len(notes), max_notes, seed)
    chosen = [notes[int(i)] for i in idx]
    codecs = [get_codec(n) for n in names]
    sr = codecs[0].sample_rate
    n_samples = int(round(DURATION_S * sr))
    t_start = time.time()
    per_codec: dict[str, dict[str, list[Any]]] = {
        n: {"pesto": [], "yin": [], "mrstft": [], "onset": [], "enc": [], "dec": []}
        for n in names}
    orig_pesto: list[float] = []
    orig_yin: list[float] = []
    from tqdm import tqdm  # noqa: PLC0415

    batches = [chosen[i:i + BATCH] for i in range(0, len(chosen), BATCH)]
    for batch in tqdm(batches, desc="eval: codec round trips", unit="batch",
                      disable=not progress or None, dynamic_ncols=True, mininterval=2.0):
        waves = np.stack([load_audio(n.path, sr, n_samples) for n in batch])
        pitches = [n.pitch for n in batch]
        ranges = [(float(midi_to_hz(p)) / 2.3, float(midi_to_hz(p)) * 2.3) for p in pitches]
        orig_p = [_pesto_or_nan(w, sr) for w in waves]
        orig_y = [_yin_or_nan(w, sr, lo, hi) for w, (lo, hi) in zip(waves, ranges, strict=True)]
        orig_pesto += orig_p
        orig_yin += orig_y
        for name, codec in zip(names, codecs, strict=True):
            rt, t_enc, t_dec = round_trip(codec, waves, pitches)
            acc = per_codec[name]
            acc["enc"].append(t_enc)
            acc["dec"].append(t_dec)
            for j, note in enumerate(batch):
                lo, hi = ranges[j]
                acc["pesto"].append(_pesto_or_nan(rt[j], sr))
                acc["yin"].append(_yin_or_nan(rt[j], sr, lo, hi))
                acc["mrstft"].append(metrics.mrstft_distance(waves[j], rt[j]))
                if note.family_str in PLUCKED_FAMILIES:
                    try:
                        d = abs(metrics.half_peak_time_s(rt[j], sr)
                                - metrics.half_peak_time_s(waves[j], sr))
                    except Exception:
                        d = math.inf
                    acc["onset"].append(1000.0 * d)
    audio_s = len(chosen) * DURATION_S
    out: dict[str, Any] = {"data": str(data_dir), "split": split, "notes": len(chosen),
                           "notes_in_split": len(notes),
                           "instruments": len({n.instrument_str for n in chosen}),
                           "codecs": {}}
    for name in names:
        acc = per_codec[name]
        ok = [within_cents(p, o) for p, o in zip(acc["pesto"], orig_pesto, strict=True)]
        ok_yin = [within_cents(p, o) for p, o in zip(acc["yin"], orig_yin, strict=True)]
        fam: dict[str, list[int]] = {}
        misses: dict[str, list[int]] = {}
        for note, good in zip(chosen, ok, strict=True):
            f = fam.setdefault(note.family_str, [0, 0])
            f[0] += int(good)
            f[1] += 1
            m = misses.setdefault(note.instrument_str, [0, 0])
            m[0] += int(not good)
            m[1] += 1
        onset = np.array(acc["onset"]) if acc["onset"] else np.array([math.nan])
        mr = np.array(acc["mrstft"])
        out["codecs"][name] = {
            "pitch_within_50c_codec": float(np.mean(ok)),
            "pitch_within_50c_codec_yin": float(np.mean(ok_yin)),
            "pitch_by_family": {k: round(v[0] / v[1], 3) for k, v in sorted(fam.items())},
            "pitch_misses": {k: v for k, v in sorted(misses.items()) if v[0]},
            "mrstft_codec": float(mr.mean()),
            "mrstft_codec_p90": float(np.percentile(mr, 90)),
            "mrstft_codec_max": float(mr.max()),
            "mrstft_by_family": {
                f: round(float(np.mean([d for d, n in zip(mr, chosen, strict=True)
                                        if n.family_str == f])), 3) for f in sorted(fam)},
            "onset_error_ms": {"median": float(np.median(onset)), "max": float(np.max(onset)),
                               "within_15ms": float(np.mean(onset <= 15.0)),
                               "notes": int(len(acc["onset"]))},
            "decode_x_realtime": float(audio_s / max(sum(acc["dec"]), 1e-9)),
            "encode_x_realtime": float(audio_s / max(sum(acc["enc"]), 1e-9)),
        }
    out["eval_s"] = round(time.time() - t_start, 1)
    return out


def report_markdown(r: dict[str, Any]) -> str:
    """A short table of `evaluate_codecs`' figures, one column per codec."""
    names = list(r["codecs"])
    rows = [("pitch within 50 c of the original (PESTO)", "pitch_within_50c_codec", "{:.3f}"),
            ("same by YIN", "pitch_within_50c_codec_yin", "{:.3f}"),
            ("MR-STFT mean", "mrstft_codec", "{:.3f}"),
            ("MR-STFT p90 / worst", None, ""),
            ("onset error ms, plucked (median / max)", None, ""),
            ("decode x real time", "decode_x_realtime", "{:.0f}")]
    lines = [f"Codec round trips on `{r['data']}` split `{r['split']}`: {r['notes']} notes "
             f"({r['instruments']} instruments).", "",
             "| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, fmt in rows:
        cells = []
        for n in names:
            c = r["codecs"][n]
            if key is not None:
                cells.append(fmt.format(c[key]))
            elif label.startswith("MR-STFT"):
                cells.append(f"{c['mrstft_codec_p90']:.3f} / {c['mrstft_codec_max']:.3f}")
            else:
                o = c["onset_error_ms"]
                cells.append(f"{o['median']:.1f} / {o['max']:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fams = sorted({f for n in names for f in r["codecs"][n]["pitch_by_family"]})
    for f in fams:
        lines.append(f"| pitch, {f} | " + " | ".join(
            f"{r['codecs'][n]['pitch_by_family'].get(f, math.nan):.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"
