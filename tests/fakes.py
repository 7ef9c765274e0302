"""Test doubles shared by the engine tests: a model stand-in whose notes are known."""

from __future__ import annotations

import numpy as np


class FakeSynth:
    """Renders a known waveform per (point, pitch): a constant-amplitude square click train,
    so onsets are exact (the first sample is non-zero) and notes are told apart by level.

    It stands in for the model only in engine-timing tests; the model has its own tests."""

    def __init__(self, sample_rate: int = 24000, duration_s: float = 1.0,
                 pitch_range: tuple[int, int] = (48, 72)) -> None:
        self.sample_rate = sample_rate
        self.duration_s = duration_s
        self.pitch_range = pitch_range
        self.model_id = "fake-00000000"
        self.codec_name = "fake"
        self.training_points = [{"name": "a", "x": 0.5, "y": 0.5, "family": "guitar"},
                                {"name": "b", "x": -0.5, "y": -0.5, "family": "organ"}]
        self.calls: list[int] = []

    def render(self, points: np.ndarray, pitches: np.ndarray, seed: int = 0) -> np.ndarray:
        n = int(self.sample_rate * self.duration_s)
        out = np.zeros((len(pitches), n), np.float32)
        t = np.arange(n)
        for i, (pt, p) in enumerate(zip(points, pitches, strict=True)):
            period = max(2, int(round(self.sample_rate / (440.0 * 2 ** ((int(p) - 69) / 12)))))
            level = 0.2 + 0.05 * (float(pt[0]) + 1.5)
            out[i] = np.where((t % period) < period // 2, level, -level)
        self.calls.append(len(pitches))
        return out
