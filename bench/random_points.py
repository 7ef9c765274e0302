"""Notes at random points of the unit disc, at random pitches: in tune?

Independent YIN tracker (model.metrics.track_pitch) against the MIDI target, octaves folded.

    .venv/bin/python bench/random_points.py [MODEL] [N]
"""

from __future__ import annotations

import json
import sys

import numpy as np

from pgesam_live.model import metrics
from pgesam_live.model.synth import Synth


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "default"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    sy = Synth.load(model, device="cpu")
    rng = np.random.default_rng(1)
    r = np.sqrt(rng.uniform(0, 1, n))
    th = rng.uniform(0, 2 * np.pi, n)
    pts = np.stack([r * np.cos(th), r * np.sin(th)], 1).astype(np.float32)
    lo, hi = sy.pitch_range
    pitches = rng.integers(lo, hi + 1, n)
    audio = np.concatenate([sy.render(pts[i:i + 20], pitches[i:i + 20], seed=0)
                            for i in range(0, n, 20)])
    cents = []
    for a, p in zip(audio, pitches, strict=True):
        f = 440 * 2 ** ((p - 69) / 12)
        g = metrics.track_pitch(a, sy.sample_rate, f / 2.3, f * 2.3)
        c = metrics.cents(g, f) if g > 0 else float("inf")
        cents.append(abs((c + 600) % 1200 - 600) if np.isfinite(c) else c)
    cs = np.array(cents)
    print(json.dumps({"model": sy.model_id, "n": n,
                      "within_50c_midi_folded": float((cs <= 50).mean()),
                      "median_abs_cents": float(np.median(cs))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
