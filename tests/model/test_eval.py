"""`pgesam-live eval`: the figures' helpers on hand-made values, and the command end to end on
a tiny model trained here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pgesam_live.cli import build_parser
from pgesam_live.errors import DataError
from pgesam_live.model import eval as E
from pgesam_live.model import train as T
from pgesam_live.model.checkpoints import load_model
from tests.model.test_train import make_tiny_nsynth, train_args

KEYS = {"mse_vae", "mse_transformer", "pitch_acc_classifier", "pitch_within_50c",
        "pitch_within_50c_midi", "octave_errors", "pitch_within_50c_codec", "pitch_misses",
        "pitch_median_abs_cents", "var_per_instrument", "var_per_pitch", "family_knn_acc",
        "codec_mrstft", "mrstft_generated", "pitch_yin", "identity_nn", "identity_nn_codec",
        "identity_nn_chance", "envelope_db", "envelope_db_codec", "release_db",
        "release_db_codec", "map_spread", "at_instrument_point"}


def test_knn_family_votes_and_breaks_ties_by_the_nearest() -> None:
    ref = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [1.0, 1.0], [0.9, 1.0]])
    ref_fam = np.array([0, 0, 0, 3, 3])
    pts = np.array([[0.05, 0.05], [0.95, 0.95], [0.95, 0.95]])
    assert E._knn_family(pts, np.array([0, 3, 0]), ref, ref_fam, k=3) == pytest.approx(2 / 3)
    # k=2 at (0.95, 0.95): one vote each would tie; its two nearest are both family 3.
    assert E._knn_family(pts[1:2], np.array([3]), ref, ref_fam, k=2) == 1.0
    # A 1-1 tie goes to the nearer reference point.
    tie_ref, tie_fam = np.array([[0.0, 0.0], [0.3, 0.0]]), np.array([5, 7])
    assert E._knn_family(np.array([[0.1, 0.0]]), np.array([5]), tie_ref, tie_fam, k=2) == 1.0
    assert E._knn_family(np.array([[0.2, 0.0]]), np.array([5]), tie_ref, tie_fam, k=2) == 0.0
    assert math.isnan(E._knn_family(np.zeros((0, 2)), np.zeros(0), ref, ref_fam))


def test_variances_per_instrument_and_per_pitch() -> None:
    # Two instruments, each at one spot apart from a 0.2 wobble in x across its two pitches.
    mu = np.array([[0.0, 0.0], [0.2, 0.0], [1.0, 1.0], [1.2, 1.0]])
    inst, pitch = np.array([0, 0, 1, 1]), np.array([48, 49, 48, 49])
    v_inst, v_pitch = E._variances(mu, inst, pitch)
    assert v_inst == pytest.approx(0.01)  # var of (0, 0.2) = 0.01, y constant
    assert v_pitch == pytest.approx(0.25 + 0.25)  # x and y each differ by 1 across instruments


def test_octave_folding() -> None:
    assert E._fold_octave_cents(1190.0) == pytest.approx(-10.0)
    assert E._fold_octave_cents(-2405.0) == pytest.approx(-5.0)
    assert E._fold_octave_cents(30.0) == pytest.approx(30.0)


def test_eval_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_tiny_nsynth(tmp_path / "nsynth")
    out = tmp_path / "run"
    T.run_train(train_args("vae", data, out, "--steps", "30"))
    T.run_train(train_args("transformer", data, out, "--steps", "5"))
    model = next(out.glob("pgesam_*.pt"))
    capsys.readouterr()
    report = tmp_path / "report.md"
    ns = build_parser().parse_args(["eval", "--model", str(model), "--data", str(data),
                                    "--split", "test", "--json", "--report", str(report)])
    assert E.run_eval(ns) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(r)
    assert r["notes"] == 4 and r["instruments"] == 1 and r["notes_generated"] == 4
    assert r["spectral_memory"] is None  # (model/memory.py: `pgesam-live memory` adds one)
    for key in ("pitch_within_50c", "pitch_within_50c_midi", "pitch_within_50c_codec",
                "family_knn_acc"):
        assert 0.0 <= r[key] <= 1.0, key
    assert set(r["pitch_acc_classifier"]) == {"real", "reconstructed", "generated"}
    assert r["mse_vae"] > 0 and r["mse_transformer"] > 0
    # A 5-step Transformer is far from its originals; the codec's round trip is much closer.
    assert r["mrstft_generated"] > r["codec_mrstft"] > 0
    # The test notes are plain harmonic tones: the codec's round trip keeps every pitch.
    assert r["pitch_within_50c_codec"] == 1.0
    assert r["pitch_yin"]["within_50c_codec"] == 1.0
    assert set(r["pitch_yin"]) == {"within_50c", "within_50c_midi", "within_50c_codec"}
    # Misses are tallied per instrument, never more than that instrument's notes.
    assert all(0 < m <= n for m, n in r["pitch_misses"].values())
    md = report.read_text()
    assert "MSE Transformer" in md and "codec's ceiling" in md
    # The model's training points are what the 5-NN votes against.
    assert len(load_model(model).training_points) == 3
    # One instrument in the split: it is always its own nearest (chance 1).
    assert r["identity_nn"] == r["identity_nn_codec"] == r["identity_nn_chance"] == 1.0
    assert r["envelope_db"] >= 0 and r["envelope_db_codec"] >= 0
    # 0.5 s notes have no note-off at 3 s to compare releases after: no figure, not a guess.
    assert r["release_db"] is None and r["release_db_codec"] is None
    # The same notes rendered at their instrument's point (its notes' mean point).
    ai = r["at_instrument_point"]
    assert ai["identity_nn"] == 1.0 and ai["envelope_db"] >= 0 and ai["release_db"] is None
    assert ai["mrstft_generated"] > r["codec_mrstft"] and ai["mse_transformer"] > 0
    assert "at the instruments' points" in report.read_text()
    ms = r["map_spread"]
    assert ms["grid"] == 5 and ms["pitch"] == 51  # C4 clamped into the model's 48..51
    assert ms["reference"] == "train split, 3 originals"
    assert ms["level_2_5s_ratio"] >= 0 and ms["centroid_ratio"] >= 0
    # The ceiling: the grid's cells play the originals of their nearest training instrument.
    assert ms["level_2_5s_ratio_nearest"] >= 0 and ms["centroid_ratio_nearest"] >= 0
    assert "nearest each cell" in md
    assert 0.0 <= ms["neighbour_closer_share"] <= 1.0
    assert "identity_nn" in md and "map_spread" in md


def test_identity_among_several_instruments_has_the_codec_as_its_ceiling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three synthetic instruments of clearly different tilt and decay: the codec's round trip
    of each note is nearest to its own original (identity 1, chance 1/3) and keeps its
    envelope within a few dB; an untrained-for-long model is no better than its ceiling."""
    data = make_tiny_nsynth(tmp_path / "nsynth", duration_s=3.0)
    out = tmp_path / "run"
    T.run_train(train_args("vae", data, out, "--steps", "10"))
    T.run_train(train_args("transformer", data, out, "--steps", "2"))
    model = load_model(next(out.glob("pgesam_*.pt")))
    r = E.evaluate(model, data, "train", max_notes=6, progress=False)
    assert r["identity_nn_chance"] == pytest.approx(1 / 3)
    assert r["identity_nn_codec"] == 1.0
    assert r["identity_nn"] <= r["identity_nn_codec"]
    assert r["envelope_db_codec"] < 3.0


def test_eval_on_an_empty_pitch_range_is_a_data_error(tmp_path: Path) -> None:
    data = make_tiny_nsynth(tmp_path / "nsynth")
    out = tmp_path / "run"
    T.run_train(train_args("vae", data, out, "--steps", "2"))
    T.run_train(train_args("transformer", data, out, "--steps", "1"))
    bundle = load_model(next(out.glob("pgesam_*.pt")))
    bundle.meta.pitch_range = (60, 61)  # no notes of the set lie there
    with pytest.raises(DataError, match="passes the filters"):
        E.evaluate(bundle, data, "test", progress=False)


def test_a_silent_note_counts_as_a_pitch_miss_not_a_crash() -> None:
    assert math.isnan(E._pesto_or_nan(np.zeros(24000), 24000))
    assert E._abs_cents(math.nan, 440.0) == math.inf
    assert E._abs_cents(440.0, 0.0) == math.inf
    assert E._abs_cents(880.0, 440.0) == pytest.approx(1200.0)


def test_a_report_path_that_cannot_be_written_fails_before_the_evaluation(
        tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    # The model does not exist either: the report path is what is checked first.
    ns = build_parser().parse_args(["eval", "--model", "no-such-model", "--data", str(tmp_path),
                                    "--report", str(tmp_path / "afile" / "r.md")])
    with pytest.raises(DataError, match=r"--report .*afile is a file, not a folder"):
        E.run_eval(ns)


def test_nearest_originals_picks_each_cells_nearest_instrument_the_reference_has() -> None:
    """Each grid cell's nearest training instrument among those with an original in the
    reference (the first of several); None when the reference has none of them."""
    from pgesam_live.model.eval import nearest_originals

    points = [{"name": "a", "x": 0.0, "y": 0.0}, {"name": "b", "x": 1.0, "y": 0.0},
              {"name": "c", "x": 0.0, "y": 1.0}]
    grid = np.array([[0.1, 0.0], [0.9, 0.1], [0.0, 0.8], [0.6, 0.9]], dtype=np.float32)
    near = nearest_originals(grid, points, ["b", "a", "a", "x"])
    # "c" has no original: (0, 0.8) and (0.6, 0.9) fall to a and b
    assert near is not None and near.tolist() == [1, 0, 1, 0]
    assert nearest_originals(grid, points, ["x", "y"]) is None
