"""`pgesam-live locate`: recordings placed on the map as the model's training placed them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pgesam_live.cli import build_parser
from pgesam_live.errors import PgesamError
from pgesam_live.model import train as T
from pgesam_live.model.checkpoints import load_model
from pgesam_live.tools import locate as L
from tests.model.test_train import make_tiny_nsynth, train_args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model trained on notes peaking at the data set's median peak."""
    root = tmp_path_factory.mktemp("loc")
    data = make_tiny_nsynth(root / "nsynth")
    for f in data.glob("nsynth-*/audio/*.wav"):
        w, sr = sf.read(f, dtype="float32")
        sf.write(f, w * (L.DATA_PEAK / np.abs(w).max()), sr)
    out = root / "run"
    T.run_train(train_args("vae", data, out, "--steps", "3"))
    T.run_train(train_args("transformer", data, out, "--steps", "1"))
    return data, next(out.glob("pgesam_*.pt"))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    ns = build_parser().parse_args(["locate", *argv, "--json"])
    assert L.run_locate(ns) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_an_instruments_notes_locate_at_its_training_point(
        tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tiny
    points = {p["name"]: p for p in load_model(model).training_points}
    for name in points:
        files = sorted(str(f) for f in (data / "nsynth-train" / "audio").glob(f"{name}-*.wav"))
        r = _run([*files, "--model", str(model)], capsys)
        # Each note's pitch read from the recording (YIN), as the data set labels it.
        assert [f["pitch"] for f in r["files"]] == [int(Path(f).stem.split("-")[1])
                                                  for f in files]
        # (Training read the notes trimmed to the tiny model's length, this reads 4 s.)
        assert r["point"]["x"] == pytest.approx(points[name]["x"], abs=2e-3)
        assert r["point"]["y"] == pytest.approx(points[name]["y"], abs=2e-3)
        assert r["point"]["nearest"] == name


def test_gain_does_not_move_a_note_and_bad_files_are_named(
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tiny
    src = next((data / "nsynth-train" / "audio").glob("*.wav"))
    w, sr = sf.read(src, dtype="float32")
    loud, quiet = tmp_path / "loud.wav", tmp_path / "quiet.wav"
    sf.write(loud, w * 5.0, sr, subtype="FLOAT")
    sf.write(quiet, w * 0.05, sr, subtype="FLOAT")
    a, b = (_run([str(f), "--model", str(model), "--pitch", "49"], capsys)["point"]
            for f in (loud, quiet))
    assert a["x"] == pytest.approx(b["x"], abs=1e-3) and a["y"] == pytest.approx(b["y"], abs=1e-3)
    # Printed for a person: each file, their mean, and the line that plays it.
    ns = build_parser().parse_args(["locate", str(loud), str(quiet), "--model", str(model)])
    assert L.run_locate(ns) == 0
    printed = capsys.readouterr().out
    assert "their point (the mean)" in printed and "nearest syn_" in printed
    assert "play it: at " in printed
    silent, text = tmp_path / "silent.wav", tmp_path / "notes.txt"
    sf.write(silent, np.zeros(sr, np.float32), sr)
    text.write_text("not audio")
    for path, match in ((silent, "silent"), (text, "not an audio file"),
                        (tmp_path / "nosuch.wav", "no such file")):
        with pytest.raises(PgesamError, match=match):
            _run([str(path), "--model", str(model)], capsys)
