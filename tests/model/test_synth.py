"""The synthesiser: batched, seeded, range-checked rendering from a model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pgesam_live.errors import CheckpointError, ConfigError
from pgesam_live.model import checkpoints as ck
from pgesam_live.model.codec import get_codec
from pgesam_live.model.synth import Synth, resolve_device
from pgesam_live.model.train import build_models

PITCHES = (48, 60)
POINTS = np.array([[0.3, -0.2], [-0.5, 0.1], [0.0, 0.7]], np.float32)
NOTES = np.array([48, 55, 60])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    codec = get_codec("harmonic")
    torch.manual_seed(0)
    vae, tr = build_models("tiny", codec.dim, 2, PITCHES)
    # Random weights give near-constant frames; a bigger output layer makes notes differ by
    # point and pitch, which the tests below rely on.
    with torch.no_grad():
        tr.out_proj.weight.mul_(20.0)
    meta = ck.ModelMeta(
        config_name="tiny", codec_name="harmonic", codec_config={},
        normalisation=ck.codec_normalisation(codec), pitch_range=PITCHES,
        instrument_names=["a", "b"], family_names=["bass", "organ"],
        training_points=ck.make_training_points(torch.tensor([[0.2, 0.1], [-0.3, 0.4]]),
                                                ["bass", "organ"], ["a", "b"]))
    return ck.save_model(tmp_path_factory.mktemp("models"), vae, tr, meta)


@pytest.fixture(scope="module")
def synth(model_file: Path) -> Synth:
    return Synth.load(model_file, device="cpu")


def test_attributes(synth: Synth, model_file: Path) -> None:
    assert synth.sample_rate == 24000
    assert synth.model_id == model_file.stem
    assert synth.pitch_range == PITCHES
    assert synth.codec_name == "harmonic"
    assert synth.duration_s == pytest.approx(synth.n_frames / 75.0)
    assert [p["name"] for p in synth.training_points] == ["a", "b"]
    assert synth.device == torch.device("cpu")


def test_render_shape_dtype_and_content(synth: Synth) -> None:
    audio = synth.render(POINTS, NOTES, seed=0)
    n = int(round(synth.duration_s * synth.sample_rate))
    assert audio.shape == (3, n) and audio.dtype == np.float32
    assert np.isfinite(audio).all()
    assert (np.abs(audio).max(axis=1) > 1e-4).all()  # every note makes sound
    assert not np.allclose(audio[0], audio[1])  # different point and pitch, different note


def test_deterministic_for_a_seed_and_seed_matters(synth: Synth) -> None:
    a = synth.render(POINTS, NOTES, seed=5)
    b = synth.render(POINTS, NOTES, seed=5)
    c = synth.render(POINTS, NOTES, seed=6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batched_equals_one_at_a_time(synth: Synth) -> None:
    # Every note of a batch gets its own seeded point and codec noise (from its point, pitch
    # and the seed), so a note sounds the same alone, first or last in a batch: batching
    # changes it by float32 reduction order only.
    batch = synth.render_frames(POINTS, NOTES, seed=1)
    audio = synth.render(POINTS, NOTES, seed=1)
    for i in range(len(NOTES)):
        one = synth.render_frames(POINTS[i:i + 1], NOTES[i:i + 1], seed=1)
        torch.testing.assert_close(one[0], batch[i], atol=1e-4, rtol=1e-4)
        alone = synth.render(POINTS[i:i + 1], NOTES[i:i + 1], seed=1)[0]
        snr_db = 10 * np.log10((alone ** 2).sum() / ((alone - audio[i]) ** 2).sum())
        assert snr_db > 20  # (this random model amplifies float noise; batch noise: < 10 dB)
    assert not torch.allclose(batch[0], batch[2], atol=1e-3)


def test_render_leaves_the_callers_rng_alone(synth: Synth) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    synth.render(POINTS[:1], NOTES[:1], seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_save_load_gives_bit_identical_audio(model_file: Path, tmp_path: Path) -> None:
    first = Synth.load(model_file, device="cpu").render(POINTS, NOTES, seed=3)
    b = ck.load_model(model_file, "cpu")
    again = ck.save_model(tmp_path, b.vae, b.transformer, b.meta)
    assert again.name == model_file.name  # same content, same hash
    second = Synth.load(again, device="cpu").render(POINTS, NOTES, seed=3)
    assert np.array_equal(first, second)


def test_pitch_and_point_checks(synth: Synth) -> None:
    with pytest.raises(ConfigError, match="outside .*48..60"):
        synth.render(POINTS[:1], [61])
    with pytest.raises(ConfigError, match="outside"):
        synth.render(POINTS[:1], [47])
    with pytest.raises(ConfigError, match="whole MIDI"):
        synth.render(POINTS[:1], [50.5])
    with pytest.raises(ConfigError, match="one pitch per point"):
        synth.render(POINTS, [50, 52])
    with pytest.raises(ConfigError, match=r"\[B, 2\]"):
        synth.render(np.zeros((2, 3)), [50, 52])
    with pytest.raises(ConfigError, match="finite"):
        synth.render([[np.nan, 0.0]], [50])
    assert synth.render(np.zeros((0, 2)), []).shape == (0, synth.render(POINTS[:1], [50]).shape[1])


def test_load_default_from_the_checkpoint_folder(model_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGESAM_CHECKPOINT_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match="pgesam-live train all"):
        Synth.load("default", device="cpu")
    (tmp_path / model_file.name).write_bytes(model_file.read_bytes())
    assert Synth.load("default", device="cpu").model_id == model_file.stem
    assert Synth.load(model_file.stem, device="cpu").model_id == model_file.stem


def test_untrained_model_renders() -> None:
    s = Synth.untrained(config="tiny", pitch_range=(50, 52), device="cpu")
    assert s.model_id == "untrained_tiny_harmonic" and s.pitch_range == (50, 52)
    audio = s.render([[0.0, 0.0]], [51], seed=0)
    assert audio.shape == (1, s.n_frames * 320) and np.isfinite(audio).all()


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="choose auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_render_on_cuda_is_deterministic(model_file: Path) -> None:
    s = Synth.load(model_file, device="cuda")
    a = s.render(POINTS, NOTES, seed=2)
    assert np.array_equal(a, s.render(POINTS, NOTES, seed=2))
    cpu = Synth.load(model_file, device="cpu").render(POINTS, NOTES, seed=2)
    assert np.abs(a - cpu).max() < 1e-2 * max(1.0, np.abs(cpu).max())
