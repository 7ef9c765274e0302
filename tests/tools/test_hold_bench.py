"""The held-note bench's codec ceiling: a release the codec can follow comes back within the
release target; one that cuts within a frame does not (the figure is not blind)."""

from __future__ import annotations

import numpy as np

from pgesam_live.model.codec import get_codec
from pgesam_live.model.codec_eval import round_trip
from pgesam_live.render.loop import Sustain, release_error_db
from pgesam_live.tools.hold_bench import HOLD_KEYS

SR = 24000


def tone(release_tau_s: float, f0_hz: float = 261.63, hold_s: float = 3.0) -> np.ndarray:
    """Three harmonics, a 20 ms attack, held hold_s, then an exponential release: float32 [4 s]."""
    t = np.arange(int(4.0 * SR)) / SR
    ph = 2 * np.pi * f0_hz * t
    x = np.sin(ph) + 0.5 * np.sin(2 * ph) + 0.25 * np.sin(3 * ph)
    env = np.minimum(1.0, t / 0.02)
    env = env * np.exp(-np.maximum(t - hold_s, 0.0) / release_tau_s)
    return (0.3 * env * x).astype(np.float32)


def test_codec_round_trip_keeps_a_slow_release_and_smears_a_cut() -> None:
    notes = np.stack([tone(0.1), tone(0.002)])
    trips, _, _ = round_trip(get_codec("harmonic"), notes, [60, 60])  # as the bench does
    assert trips.shape[0] == 2 and abs(trips.shape[1] - notes.shape[1]) <= 320
    errs = [release_error_db(Sustain.analyse(trip, SR, 261.63), tone(tau, hold_s=0.5), 0.5)
            for trip, tau in zip(trips, (0.1, 0.002), strict=True)]
    assert errs[0] <= 3.0  # a 100 ms release: the codec keeps it
    assert errs[1] > 10.0  # a 2 ms cut: smeared over a 13 ms frame


def test_the_codec_ceiling_is_a_bench_key() -> None:
    for h in ("0p5", "2", "10"):
        assert f"release_codec_err_{h}s_db" in HOLD_KEYS
        assert f"release_codec_err_{h}s_db_max" in HOLD_KEYS
