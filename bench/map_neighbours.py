"""Does the map put a held-out instrument near training instruments that sound like it?

For every held-out instrument of a split (its point: the mean of its notes' latent points, as
`eval`'s `at_instrument_point` takes it) and each of MIDI 48 / 60 / 72, the envelope error
(`metrics.envelope_error_db`, as `eval`'s `envelope_db`) between its original and the
original of the same pitch of:
- the training instrument nearest to it on the map (what a decoder that plays its
  neighbours can at best give there),
- the best training instrument (a perfect map's ceiling),
- the median training instrument (a map that knows nothing);
and the same for the log-band spectrogram distance (levels re peak, as `identity_nn`
compares notes), and how often the nearest is of the note's own family.
If the nearest is no better than the median, the map's neighbourhoods do not carry the
envelope, and no decoder trained on the training points will play a held-out instrument's
envelope from its point: the lever is the map (the VAE), not the decoder.

    .venv/bin/python bench/map_neighbours.py --data data/gm --split test \\
        [--train-data data/gm] [--model M | --vae RUN/vae.pt]

`--vae` scores a VAE run's map before any Transformer is trained on it (e.g. one of
`train vae --vae-frames 300`, which reads the whole note), with its own training points.

Figures on stdout, one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pgesam_live.model.checkpoints import build_vae, load_model, load_training_state
from pgesam_live.model.codec import get_codec
from pgesam_live.model.data import instrument_means, load_audio, load_frames
from pgesam_live.model.metrics import (
    envelope_error_db,
    log_band_spectrogram,
    spectrogram_distance,
)
from pgesam_live.model.train import encode_all

PITCHES = (48, 60, 72)
NOTE_S = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="NSynth-format set of the held-out notes")
    ap.add_argument("--split", default="test")
    ap.add_argument("--train-data", default="data/gm",
                    help="the set the model was trained on (its train split's originals)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--vae", default=None, help="a VAE training state (RUN/vae.pt) instead")
    ns = ap.parse_args()

    if ns.vae:
        st = load_training_state(Path(ns.vae))
        vae = build_vae(st["model_config"], st["model"], ns.vae).eval()
        codec = get_codec(st["data"]["codec"]["name"])
        rng = tuple(st["data"]["pitch_range"])
        training_points = st["training_points"]
    else:
        b = load_model(ns.model)
        vae, codec, rng = b.vae, b.codec, tuple(b.meta.pitch_range)
        training_points = b.meta.training_points
    sr, n = int(codec.sample_rate), NOTE_S * int(codec.frame_rate_hz)
    held = load_frames(ns.data, ns.split, codec, pitch_range=rng,  # type: ignore[arg-type]
                       n_frames=n, duration_s=float(NOTE_S))
    mu, _ = encode_all(vae, held.frames[:, :n].float())
    points = instrument_means(mu, held.instrument.long()).numpy()  # [N, 2] per note
    names = [t["name"] for t in training_points]
    xy = np.array([[t["x"], t["y"]] for t in training_points])
    train = load_frames(ns.train_data, "train", codec, pitch_range=rng,  # type: ignore[arg-type]
                        n_frames=n, duration_s=float(NOTE_S))
    originals = {(r.instrument_str, r.pitch): r.path for r in train.notes}

    waves: dict[tuple[str, int], np.ndarray] = {}

    def original(key: tuple[str, int]) -> np.ndarray:
        if key not in waves:
            waves[key] = load_audio(originals[key], sr, NOTE_S * sr)
        return waves[key]

    spectra: dict[tuple[str, int], np.ndarray] = {}

    def spectrum(key: tuple[str, int]) -> np.ndarray:
        if key not in spectra:
            spectra[key] = log_band_spectrogram(original(key), sr)
        return spectra[key]

    figs: dict[str, list[float]] = {k: [] for k in (
        "env_near", "env_best", "env_median", "spec_near", "spec_median", "own_family")}
    dist: list[float] = []
    family = {t["name"]: t["family"] for t in training_points}
    seen: set[tuple[str, int]] = set()
    for i, r in enumerate(held.notes):
        if r.pitch not in PITCHES or (r.instrument_str, r.pitch) in seen:
            continue
        seen.add((r.instrument_str, r.pitch))
        x = load_audio(r.path, sr, NOTE_S * sr)
        keys = [k for k in names if (k, r.pitch) in originals]
        if not keys:
            continue
        env = {k: envelope_error_db(x, original((k, r.pitch)), sr) for k in keys}
        spec_x = log_band_spectrogram(x, sr)
        spec = {k: spectrogram_distance(spec_x, spectrum((k, r.pitch))) for k in keys}
        d = np.linalg.norm(xy - points[i], axis=1)
        j_near = next(int(j) for j in np.argsort(d) if names[j] in env)
        near = names[j_near]
        figs["env_near"].append(env[near])
        figs["env_best"].append(min(env.values()))
        figs["env_median"].append(float(np.median(list(env.values()))))
        figs["spec_near"].append(spec[near])
        figs["spec_median"].append(float(np.median(list(spec.values()))))
        figs["own_family"].append(float(family[near] == r.family_str))
        dist.append(float(d[j_near]))
    m = {k: float(np.mean(v)) for k, v in figs.items()}
    print(f"{ns.data} {ns.split}, {len(dist)} notes (MIDI {'/'.join(map(str, PITCHES))}): "
          f"envelope_db against the nearest training instrument on the map "
          f"{m['env_near']:.2f}, the best {m['env_best']:.2f}, the median "
          f"{m['env_median']:.2f}; log-band spectrogram distance (dB) to the nearest "
          f"{m['spec_near']:.2f}, the median {m['spec_median']:.2f}; the nearest of its own "
          f"family {m['own_family']:.2f}; distance to the nearest, median "
          f"{np.median(dist):.3f}")


if __name__ == "__main__":
    main()
