"""`pgesam-live locate FILE.wav [FILE.wav ...]`: where a sound lies on the timbre map.

The encoder half of the instrument (as RAVE's encode): each recording is read as the data set
is (mono, the codec's rate, 4 s), encoded by the model's codec (its f0 search guided by the
note's pitch: `--pitch`, else YIN's reading), and placed by the VAE (the mean of its latent):
the point `note X Y PITCH`, `at X Y` and the patches play. Several notes of one instrument
give its point as the mean of theirs, as the model's training points are made. Each point is
printed with its nearest training instrument.
"""

from __future__ import annotations

import math
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.errors import PgesamError

NOTE_S = 4.0  # the data set's note length: what the VAE was trained to read
QUIET_DB = -60.0  # a recording quieter than this (peak, dBFS) has nothing to place
# Recordings come at any gain; the data set's notes peak at 0.06-0.15 (10th-90th percentile of
# the FluidR3 + MuseScore set, median 0.10), and the codec's loudness channel is absolute: each
# recording is scaled to that median peak before it is placed.
DATA_PEAK = 0.1


def _read(path: Path, sample_rate: int) -> np.ndarray:
    """A recording as mono float32 [N] at `sample_rate`, NOTE_S long (trimmed or padded)."""
    from pgesam_live.errors import DataError  # noqa: PLC0415
    from pgesam_live.model.data import load_audio  # noqa: PLC0415

    if not path.is_file():
        raise PgesamError(f"{path}: no such file; give a WAV/FLAC/OGG recording of one note")
    try:  # as the data set is read
        wave = load_audio(path, sample_rate, int(round(NOTE_S * sample_rate)))
    except DataError as e:  # (its message names the data set's fix, not this one)
        raise PgesamError(f"{path} is not an audio file soundfile can read; give a "
                          "WAV/FLAC/OGG recording of one note") from e
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak <= 10 ** (QUIET_DB / 20):
        raise PgesamError(f"{path}: silent (peak below {QUIET_DB:g} dBFS in its first "
                          f"{NOTE_S:g} s); give a recording of a note")
    return wave * (DATA_PEAK / peak)


def _pitch_of(wave: np.ndarray, sample_rate: int, given: int | None, path: Path) -> int:
    """The note's MIDI pitch: `given`, else YIN's reading rounded to the nearest key."""
    from pgesam_live.errors import CodecError  # noqa: PLC0415
    from pgesam_live.model import metrics  # noqa: PLC0415

    if given is not None:
        return given
    try:
        f0 = metrics.track_pitch(wave, sample_rate, 30.0, 2000.0)
    except CodecError:
        f0 = 0.0
    if not f0 > 0:
        raise PgesamError(f"{path}: no pitch found in it; give the note's pitch with "
                          "--pitch (e.g. --pitch C4)")
    return int(round(69 + 12 * math.log2(f0 / 440.0)))


def locate(bundle: Any, paths: list[Path], pitch: int | None = None
           ) -> list[dict[str, Any]]:
    """Each recording's point: [{file, pitch, x, y, nearest, family, distance}]."""
    import torch  # noqa: PLC0415

    from pgesam_live.model.data import encode_notes  # noqa: PLC0415

    codec, vae = bundle.codec, bundle.vae
    sr = codec.sample_rate
    out = []
    for path in paths:
        wave = _read(path, sr)
        p = _pitch_of(wave, sr, pitch, path)
        frames = encode_notes(codec, torch.as_tensor(wave)[None], [p])
        with torch.inference_mode():
            mu = vae.encode(frames[:, :vae.cfg.n_frames])[0][0]
        xy = (float(mu[0]), float(mu[1]))
        out.append({"file": str(path), "pitch": p, "x": xy[0], "y": xy[1],
                    **_nearest(bundle.training_points, xy)})
    return out


def _nearest(points: list[dict[str, Any]], xy: tuple[float, float]) -> dict[str, Any]:
    if not points:
        return {"nearest": None, "family": None, "distance": None}
    d = [math.hypot(p["x"] - xy[0], p["y"] - xy[1]) for p in points]
    k = int(np.argmin(d))
    return {"nearest": points[k]["name"], "family": points[k]["family"], "distance": d[k]}


def _nearest_text(f: dict[str, Any]) -> str:
    if f["nearest"] is None:
        return "no training instruments in this model to compare with"
    return f"nearest {f['nearest']} ({f['family']}) at {f['distance']:.3f}"


def run_locate(ns: Namespace) -> int:
    import json  # noqa: PLC0415

    from pgesam_live.app.common import settings_from_args  # noqa: PLC0415
    from pgesam_live.model.checkpoints import load_model  # noqa: PLC0415
    from pgesam_live.notes import note_to_midi  # noqa: PLC0415

    s = settings_from_args(ns)
    pitch = None if ns.pitch is None else note_to_midi(ns.pitch)
    bundle = load_model(s.model, "cpu")
    found = locate(bundle, [Path(f) for f in ns.files], pitch)
    mean = (float(np.mean([f["x"] for f in found])), float(np.mean([f["y"] for f in found])))
    point = {"x": mean[0], "y": mean[1], **_nearest(bundle.training_points, mean)}
    if ns.json:
        print(json.dumps({"model": bundle.model_id, "files": found, "point": point}))
        return 0
    for f in found:
        print(f"{f['file']}: ({f['x']:+.4f}, {f['y']:+.4f}) pitch {f['pitch']}, "
              f"{_nearest_text(f)}")
    if len(found) > 1:
        print(f"their point (the mean): ({point['x']:+.4f}, {point['y']:+.4f}), "
              f"{_nearest_text(point)}")
    print(f"play it: at {point['x']:.4f} {point['y']:.4f}   (model {bundle.model_id})")
    return 0


__all__ = ["locate", "run_locate"]
