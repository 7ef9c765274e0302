"""The spectral memory (model/memory.py): its blend over the map on known answers, what it
does to frames, the model file that carries it, and one built from a tiny training set."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pgesam_live.errors import CheckpointError
from pgesam_live.model import train as T
from pgesam_live.model.checkpoints import load_model, pack_model, save_with_memory
from pgesam_live.model.memory import (
    EPS,
    MAX_GAIN_DB,
    SpectralMemory,
    floored,
    static_log_profile,
)
from pgesam_live.model.memory_build import build_memory
from pgesam_live.model.synth import Synth
from tests.model.test_train import make_tiny_nsynth, train_args

H = 4
SCALE, OFFSET = 140.0, 140.0  # the harmonic codec's loudness normalisation
LIMIT = MAX_GAIN_DB / 20 * math.log(10)  # the largest gain, natural log


def _memory() -> SpectralMemory:
    """Two instruments far apart; the first has pitches 60 and 61, the second only 60."""
    xy = torch.tensor([[0.0, 0.0], [0.5, 0.0]])
    residual = torch.zeros(2, 2, H)
    residual[0, 0] = torch.tensor([1.0, 0.0, -1.0, 0.5])
    residual[0, 1] = torch.tensor([0.2, 0.2, 0.2, 0.2])
    residual[1, 0] = torch.tensor([-1.0, 1.0, 0.0, 0.0])
    has = torch.tensor([[True, True], [True, False]])
    return SpectralMemory(xy, residual, has, pitch_lo=60)


def test_gains_at_an_instrument_are_its_own_and_halfway_a_mean() -> None:
    m = _memory()
    g = m.gains_log(torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.25, 0.0]]),
                    torch.tensor([60, 60, 60]))
    assert torch.allclose(g[0], m.residual[0, 0], atol=1e-3)  # (the other weighs ~4e-5)
    assert torch.allclose(g[1], m.residual[1, 0], atol=1e-3)
    assert torch.allclose(g[2], (m.residual[0, 0] + m.residual[1, 0]) / 2, atol=1e-6)


def test_an_instrument_without_the_pitch_gives_it_no_say() -> None:
    m = _memory()
    g = m.gains_log(torch.tensor([[0.5, 0.0]]), torch.tensor([61]))  # only the first has 61
    assert torch.allclose(g[0], m.residual[0, 1], atol=1e-6)
    # beyond the table's pitches: its nearest pitch (the model renders those re-pitched)
    assert torch.allclose(m.gains_log(torch.tensor([[0.0, 0.0]]), torch.tensor([90]))[0],
                          m.residual[0, 1], atol=1e-3)
    none = SpectralMemory(m.xy, m.residual, torch.zeros(2, 2, dtype=torch.bool), 60)
    assert torch.equal(none.gains_log(torch.tensor([[0.1, 0.1]]), torch.tensor([60])),
                       torch.zeros(1, H))


def test_a_reach_fades_the_memory_away_from_its_instruments() -> None:
    import dataclasses

    m = dataclasses.replace(_memory(), reach=0.1)
    at, off, far = m.gains_log(torch.tensor([[0.0, 0.0], [0.0, 0.1], [0.0, 5.0]]),
                               torch.tensor([60, 60, 60]))
    assert torch.allclose(at, m.residual[0, 0], atol=1e-3)
    assert torch.allclose(off, _memory().gains_log(torch.tensor([[0.0, 0.1]]),
                                                   torch.tensor([60]))[0] * math.exp(-1),
                          atol=1e-6)  # one reach away: e^-1 of its say
    assert torch.allclose(far, torch.zeros(H), atol=1e-9)
    with pytest.raises(CheckpointError, match="reach -1.0 must be a positive distance"):
        dataclasses.replace(m, reach=-1.0)
    assert SpectralMemory.from_payload(m.to_payload(), "m.pt").reach == 0.1


def test_a_point_per_frame_gives_each_frame_its_own_gains() -> None:
    m = _memory()
    path = torch.tensor([[[0.0, 0.0], [0.25, 0.0], [0.5, 0.0]]])  # [1, T=3, 2]
    g = m.gains_log(path, torch.tensor([60]))
    assert g.shape == (1, 3, H)
    each = m.gains_log(path[0], torch.tensor([60, 60, 60]))
    assert torch.allclose(g[0], each, atol=1e-6)


def test_apply_scales_the_shares_and_nothing_else() -> None:
    m = _memory()
    frames = torch.rand(1, 5, 2 + H + 3)
    out = m.apply(frames, torch.tensor([[0.0, 0.0]]), torch.tensor([60]))
    gain = torch.exp(m.gains_log(torch.tensor([[0.0, 0.0]]), torch.tensor([60])))[0]
    scaled = (frames[..., 2:2 + H] + 1e-6) * gain
    want = scaled / scaled.sum(-1, keepdim=True) * frames[..., 2:2 + H].sum(-1, keepdim=True)
    assert torch.allclose(out[..., 2:2 + H], want, atol=1e-6)  # the shares' sum kept
    assert torch.equal(out[..., :2], frames[..., :2])
    assert torch.equal(out[..., 2 + H:], frames[..., 2 + H:])


def test_the_profile_weighs_the_loud_frames_only() -> None:
    frames = torch.zeros(1, 3, 2 + H)
    frames[0, :, 2:] = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    loud_db = torch.tensor([-10.0, -10.0, -50.0])  # the third frame 40 dB down: left out
    frames[0, :, 1] = (loud_db + OFFSET) / SCALE
    prof = static_log_profile(frames, SCALE, OFFSET, H).exp()[0]
    assert prof[:2] == pytest.approx([0.5, 0.5], abs=1e-5)
    assert prof[2:] == pytest.approx([0.0, 0.0], abs=1e-5)


def test_a_profile_is_floored_60_db_below_its_strongest_harmonic() -> None:
    prof = torch.log(torch.tensor([[1.0, 1e-2, 1e-4, 1e-8]]))
    out = floored(prof).exp()[0]
    assert out[:3].tolist() == pytest.approx([1.0, 1e-2, 1e-3], rel=1e-4)  # -60 dB: 1e-3
    assert float(out[3]) == pytest.approx(1e-3, rel=1e-4)


def test_a_damaged_memory_is_refused_with_its_fix() -> None:
    with pytest.raises(CheckpointError, match="do not agree"):
        SpectralMemory(torch.zeros(2, 2), torch.zeros(3, 2, H), torch.zeros(3, 2).bool(), 60)
    with pytest.raises(CheckpointError, match="damaged spectral memory.*pgesam-live memory"):
        SpectralMemory.from_payload({"xy": torch.zeros(2, 2)}, "m.pt")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = make_tiny_nsynth(tmp_path_factory.mktemp("nsynth"))
    out = tmp_path_factory.mktemp("run")
    assert T.run_train(train_args("vae", data, out, "--steps", "3")) == 0
    assert T.run_train(train_args("transformer", data, out, "--steps", "2")) == 0
    return data, next(out.glob("pgesam_*.pt"))


def test_a_built_memory_gives_each_training_instrument_its_own_spectrum(
        tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Built from the training set, the memory brings the note-long harmonic profile of each
    training instrument's note at its own point nearer its original's (at least halfway
    where no other instrument lies within the blend's reach: the gains are note-long, the
    shares renormalised frame by frame, and this tiny decoder's frames vary wildly), and
    the model file carries it (packed ones too)."""
    data, model = tiny_run
    bundle = load_model(model)
    memory = build_memory(bundle, str(data), "train", progress=False)
    path = save_with_memory(model, memory, tmp_path)
    with_mem = load_model(path)
    assert with_mem.memory is not None and with_mem.id != bundle.id
    assert torch.equal(with_mem.memory.has, memory.has)
    assert with_mem.meta.training["spectral_memory"]["model"] == bundle.id
    codec = bundle.codec
    from pgesam_live.model.data import load_frames

    fs = load_frames(data, "train", codec, pitch_range=bundle.pitch_range, velocities=None,
                     n_frames=bundle.transformer.cfg.n_frames, progress=False,
                     duration_s=bundle.transformer.cfg.n_frames / codec.frame_rate_hz + 0.1)
    xy = memory.xy
    d = torch.cdist(xy, xy) + torch.eye(len(xy)) * 9
    plain, remembering = Synth(load_model(model), "cpu"), Synth(with_mem, "cpu")
    checked = 0
    for i in range(len(xy)):
        for n in np.nonzero(fs.instrument.numpy() == i)[0][:2]:
            pitch = int(fs.pitch[n])
            own = static_log_profile(fs.frames[n:n + 1], codec.LOUD_SCALE_DB,
                                     codec.LOUD_OFFSET_DB, codec.n_harmonics)
            before, after = (static_log_profile(s.render_frames(xy[i:i + 1].numpy(), [pitch]),
                                                codec.LOUD_SCALE_DB, codec.LOUD_OFFSET_DB,
                                                codec.n_harmonics)
                             for s in (plain, remembering))
            # as the memory counts them (60 dB below the strongest), where the gain is not
            # at its limit
            own, before, after = floored(own), floored(before), floored(after)
            fits = (own - before).abs() < LIMIT
            err_before = (before - own)[fits].abs().mean()
            err_after = (after - own)[fits].abs().mean()
            assert err_after < err_before, (i, pitch)
            if float(d[i].min()) > 30 * EPS:  # its own residual alone (the others ~1e-3)
                assert err_after < 0.5 * err_before, (i, pitch, float(err_after))
                checked += 1
    assert checked or float(d.min()) <= 30 * EPS
    # Packed against its base, it keeps the memory; given a memory, a packed model stays
    # packed (its base record kept, the base next to it).
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / model.name).write_bytes(model.read_bytes())
    packed = pack_model(path, tmp_path / "packed" / model.name, tmp_path / "packed")
    assert torch.equal(load_model(packed).memory.residual, with_mem.memory.residual)
    again = save_with_memory(packed, memory, tmp_path / "packed")
    from pgesam_live.model.checkpoints import read_stored_payload

    assert read_stored_payload(again)[0]["base"]["file"] == model.name
    assert load_model(again).memory is not None


def test_memory_cli_refuses_a_set_of_other_instruments(tiny_run: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    from pgesam_live.cli import build_parser
    from pgesam_live.errors import DataError
    from pgesam_live.model.memory_build import run_memory

    data, model = tiny_run
    other = make_tiny_nsynth(tmp_path / "other")
    for p in (other / "nsynth-train").glob("examples.json"):
        p.write_text(p.read_text().replace("syn_bass_0", "syn_tuba_0"))
    for w in (other / "nsynth-train" / "audio").glob("syn_bass_0-*.wav"):
        w.rename(w.with_name(w.name.replace("syn_bass_0", "syn_tuba_0")))
    ns = build_parser().parse_args(["memory", str(model), "--data", str(other),
                                    "--out", str(tmp_path)])
    with pytest.raises(DataError, match="syn_tuba_0 are not this model's training instruments"):
        run_memory(ns)
