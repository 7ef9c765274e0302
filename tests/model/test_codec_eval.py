"""`pgesam-live eval --codec-only`: its helpers' known answers and the command end to end on a
tiny NSynth-format set (no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pgesam_live.cli import build_parser
from pgesam_live.errors import ConfigError
from pgesam_live.model import codec_eval as CE
from pgesam_live.model import eval as E
from pgesam_live.model import metrics
from tests.model.test_train import make_tiny_nsynth

SR = 24000


def test_metric_known_answers() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SR).astype(np.float32)
    assert metrics.mrstft_distance(x, x) == 0.0  # an identical round trip
    assert metrics.mrstft_distance(x, 0.5 * x) > 0.5  # a 6 dB level error counts
    assert CE.within_cents(440.0, 440.0 * 2 ** (49 / 1200))
    assert not CE.within_cents(440.0, 440.0 * 2 ** (51 / 1200))
    assert not CE.within_cents(math.nan, 440.0) and not CE.within_cents(440.0, 0.0)
    # Onset: a 10 ms later attack is 10 ms later at half peak.
    t = np.arange(SR) / SR
    a = np.sin(2 * np.pi * 220 * t) * (t >= 0.05)
    b = np.sin(2 * np.pi * 220 * t) * (t >= 0.06)
    d = metrics.half_peak_time_s(b, SR) - metrics.half_peak_time_s(a, SR)
    assert d == pytest.approx(0.010, abs=0.0011)
    assert list(CE._subsample(10, 20)) == list(range(10))
    assert list(CE._subsample(10, 4)) == list(CE._subsample(10, 4))  # deterministic


def test_codec_only_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_tiny_nsynth(tmp_path / "nsynth", duration_s=1.0)
    report = tmp_path / "codecs.md"
    ns = build_parser().parse_args(["eval", "--codec-only", "harmonic", "partials", "--data",
                                    str(data), "--split", "train", "--json", "--max-notes",
                                    "3", "--report", str(report)])
    assert E.run_eval(ns) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["notes"] == 3 and r["split"] == "train"
    assert set(r["codecs"]) == {"harmonic", "partials"}
    for name, c in r["codecs"].items():
        # Plain harmonic tones: both codecs keep every pitch, closely.
        assert c["pitch_within_50c_codec"] == 1.0, name
        assert c["pitch_within_50c_codec_yin"] == 1.0, name
        assert 0.0 < c["mrstft_codec"] < 0.5, name
        assert c["decode_x_realtime"] > 1.0, name
        assert set(c["onset_error_ms"]) == {"median", "max", "within_15ms", "notes"}
        assert all(0.0 <= v <= 1.0 for v in c["pitch_by_family"].values())
    assert "| pitch within 50 c" in report.read_text()
    with pytest.raises(ConfigError, match="choose from"):
        E.run_eval(build_parser().parse_args(["eval", "--codec-only", "mp3", "--data",
                                              str(data)]))
