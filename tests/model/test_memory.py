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
    CODE_STEP_DB,
    EPS,
    MAX_GAIN_DB,
    Dynamics,
    SpectralMemory,
    floored,
    interpolation,
    level_db_re_peak,
    segment_log_profiles,
    segment_means,
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


def test_interpolation_reads_segments_linearly_between_their_centres() -> None:
    m = interpolation((0, 2, 6, 10), 12)  # centres 0.5, 3.5, 7.5
    assert m.shape == (12, 3)
    assert torch.allclose(m.sum(1), torch.ones(12))
    assert m[0].tolist() == [1.0, 0.0, 0.0]          # before the first centre: held
    assert m[2].tolist() == pytest.approx([0.5, 0.5, 0.0])  # halfway from 0.5 to 3.5
    assert m[6].tolist() == pytest.approx([0.0, 0.375, 0.625])  # 2.5 of 4 from 3.5 to 7.5
    assert m[11].tolist() == [0.0, 0.0, 1.0]         # after the last: held
    assert torch.equal(interpolation((0, 2, 6, 10), 4, first_frame=8), m[8:])
    assert torch.equal(interpolation((0, 10), 3), torch.ones(3, 1))


def _dynamic_memory() -> SpectralMemory:
    """_memory() with dynamics over 8-frame notes of 3 noise bands: instrument 0 at pitch 60
    falls 30 dB from its first segment (frames 0-1) to its last (6-7), its first band
    brighter by 1 (log) in the second spectrum segment (4-7); instrument 1 has none."""
    base = _memory()
    level = torch.zeros(2, 2, 4)
    level[0, 0] = torch.tensor([0.0, -10.0, -20.0, -30.0])
    bands = torch.zeros(2, 2, 2, 2)
    bands[0, 0, 1, 0] = 1.0
    dyn = Dynamics(level, bands, (0, 2, 4, 6, 8), (0, 4, 8), (0, 2, H))
    return SpectralMemory(base.xy, base.residual, base.has, 60, dynamics=dyn, n_noise_bands=3)


def test_dynamics_move_the_level_and_the_spectrum_over_the_note() -> None:
    m = _dynamic_memory()
    at = torch.tensor([[0.0, 0.0], [0.5, 0.0]])
    g, level = m.frame_gains(at, torch.tensor([60, 60]), 8)
    assert g.shape == (2, 8, H) and level.shape == (2, 8)
    # segment centres 0.5, 2.5, 4.5, 6.5: frame 0 before the first (held), frame 3 a
    # quarter of the way from -10 to -20, frame 7 after the last (held)
    assert level[0, 0] == pytest.approx(0.0, abs=0.01)
    assert level[0, 3] == pytest.approx(-12.5, abs=0.01)
    assert level[0, 7] == pytest.approx(-30.0, abs=0.01)
    assert level[1].abs().max() < 0.01                    # the other instrument: none
    static = m.gains_log(at, torch.tensor([60, 60]))
    # before the first spectrum centre (1.5) the note-long gains, after the last (5.5) +1 on
    # harmonics 0-1 (band 0)
    assert torch.allclose(g[0, 0], static[0], atol=1e-3)
    assert torch.allclose(g[0, 7], static[0] + torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-3)
    frames = torch.rand(2, 8, 2 + H + 3)
    out = m.apply(frames, at, torch.tensor([60, 60]))
    assert torch.allclose(out[..., 1], frames[..., 1] + level / SCALE, atol=1e-6)
    assert torch.allclose(out[..., 2 + H:], frames[..., 2 + H:] + level[..., None] / 160.0,
                          atol=1e-6)
    assert torch.equal(out[..., 0], frames[..., 0])          # pitch untouched
    # a streamed head is its note's start; a later stretch read from its own first frame
    assert torch.allclose(m.apply(frames[:, :3], at, torch.tensor([60, 60])), out[:, :3])
    assert torch.allclose(m.apply(frames[:, 5:], at, torch.tensor([60, 60]), first_frame=5),
                          out[:, 5:])
    # a point per frame: each frame as the note at that point
    path = at[:1, None, :].expand(1, 8, 2)
    assert torch.allclose(m.apply(frames[:1], path, torch.tensor([60])), out[:1], atol=1e-6)


def test_dynamics_move_the_noise_bands_and_sounding_partials_only() -> None:
    """On the partials codec's layout (shares, noise bands, stretch, partial ratios, partial
    levels) the level moves the loudness, the noise bands and the sounding partials' levels;
    the stretch, the ratios (a partial's tuning) and a silent partial stay."""
    import dataclasses

    n_noise, n_part = 3, 2
    m = dataclasses.replace(_dynamic_memory(), n_partials=n_part)
    d = 2 + H + n_noise + 1 + 2 * n_part
    frames = torch.rand(1, 8, d) * 0.5 + 0.25
    frames[..., d - 1] = 0.0                               # the second partial is silent
    out = m.apply(frames, torch.tensor([[0.0, 0.0]]), torch.tensor([60]))
    level = m.frame_gains(torch.tensor([[0.0, 0.0]]), torch.tensor([60]), 8)[1]
    noise = slice(2 + H, 2 + H + n_noise)
    assert torch.allclose(out[..., noise], frames[..., noise] + level[..., None] / 160.0,
                          atol=1e-6)
    rest = slice(2 + H + n_noise, 2 + H + n_noise + 1 + n_part)  # stretch and ratios
    assert torch.equal(out[..., rest], frames[..., rest])
    assert torch.allclose(out[..., d - 2], (frames[..., d - 2] + level / SCALE).clamp(min=0),
                          atol=1e-6)
    assert torch.equal(out[..., d - 1], frames[..., d - 1])
    with pytest.raises(CheckpointError, match="built for frames of 14 channels"):
        m.apply(frames[..., :-1], torch.tensor([[0.0, 0.0]]), torch.tensor([60]))


def test_a_dynamic_memory_is_stored_in_8_bit_codes_and_read_back() -> None:
    m = _dynamic_memory()
    back = SpectralMemory.from_payload(m.to_payload(), "m.pt")
    assert back.dynamics is not None and m.dynamics is not None
    assert back.to_payload()["residual_codes"].dtype == torch.int8
    half_step = CODE_STEP_DB / 2 + 1e-6
    assert (back.dynamics.level_db - m.dynamics.level_db).abs().max() <= half_step
    db = 20 / math.log(10)
    assert (back.residual - m.residual).abs().max() * db <= half_step
    assert (back.dynamics.band_log - m.dynamics.band_log).abs().max() * db <= half_step
    assert back.dynamics.level_edges == (0, 2, 4, 6, 8)
    with pytest.raises(CheckpointError, match="do not fit 2 instruments x 2 pitches x 4"):
        Dynamics(torch.zeros(2, 2, 3), torch.zeros(2, 2, 2, 2), (0, 2, 4, 6, 8), (0, 4, 8),
                 (0, 2, H)).check(2, 2, H)
    with pytest.raises(CheckpointError, match="must rise from 0"):
        Dynamics(torch.zeros(2, 2, 1), torch.zeros(2, 2, 1, 1), (0, 0), (0, 8),
                 (0, H)).check(2, 2, H)


def test_segment_figures_on_known_notes() -> None:
    frames = torch.zeros(1, 4, 2 + H)
    frames[0, :, 1] = (torch.tensor([-10.0, -20.0, -90.0, -10.0]) + OFFSET) / SCALE
    frames[0, :, 2:] = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0],
                                     [0, 0, 0, 1.0]])
    assert level_db_re_peak(frames, SCALE, OFFSET)[0].tolist() == pytest.approx(
        [0.0, -10.0, -60.0, 0.0])  # floored 60 dB down
    prof, ok = segment_log_profiles(frames, SCALE, OFFSET, H, (0, 2, 3, 4))
    # the first segment weighs its frames by energy (10 dB apart: 10 to 1); the second's
    # only frame lies 80 dB down: no sound
    assert prof[0, 0].exp()[:2].tolist() == pytest.approx([10 / 11, 1 / 11], abs=1e-4)
    assert ok[0].tolist() == [True, False, True]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = make_tiny_nsynth(tmp_path_factory.mktemp("nsynth"))
    out = tmp_path_factory.mktemp("run")
    assert T.run_train(train_args("vae", data, out, "--steps", "3")) == 0
    assert T.run_train(train_args("transformer", data, out, "--steps", "2")) == 0
    return data, next(out.glob("pgesam_*.pt"))


def test_a_built_memory_gives_each_training_instrument_its_own_spectrum(
        tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Built from the training set, the memory brings the note-long harmonic profile and the
    level envelope (dB re peak, per segment of the note) of each training instrument's note
    at its own point nearer its original's (at least halfway
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
    checked = checked_env = 0
    for i in range(len(xy)):
        for n in np.nonzero(fs.instrument.numpy() == i)[0][:2]:
            pitch = int(fs.pitch[n])
            own = static_log_profile(fs.frames[n:n + 1], codec.LOUD_SCALE_DB,
                                     codec.LOUD_OFFSET_DB, codec.n_harmonics)
            renders = [s.render_frames(xy[i:i + 1].numpy(), [pitch])
                       for s in (plain, remembering)]
            before, after = (static_log_profile(r, codec.LOUD_SCALE_DB, codec.LOUD_OFFSET_DB,
                                                codec.n_harmonics) for r in renders)
            # the level envelope (dB re peak) per segment of the note, as the dynamics keep it
            if memory.dynamics is not None and len(np.nonzero(fs.instrument.numpy() == i)[0]
                                                   [fs.pitch.numpy()[fs.instrument.numpy() == i]
                                                    == pitch]) == 1:
                edges = memory.dynamics.level_edges
                env_own, env_before, env_after = (
                    segment_means(level_db_re_peak(f[:, :edges[-1]], codec.LOUD_SCALE_DB,
                                                   codec.LOUD_OFFSET_DB), edges)
                    for f in (fs.frames[n:n + 1], *renders))
                e_before = (env_before - env_own).abs().mean()
                e_after = (env_after - env_own).abs().mean()
                assert e_after < e_before or e_before < 0.5, (i, pitch)
                if float(d[i].min()) > 30 * EPS:
                    assert e_after < 0.8 * e_before, (i, pitch, float(e_after))
                    checked_env += 1
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
    assert checked_env or float(d.min()) <= 30 * EPS
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
