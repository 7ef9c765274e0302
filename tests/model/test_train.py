"""Training end to end on a tiny synthetic NSynth-format set: both stages, checkpoints,
--resume, the model file, and a 2-process torchrun run."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from pgesam_live.cli import build_parser
from pgesam_live.errors import CheckpointError, ConfigError
from pgesam_live.model import train as T
from pgesam_live.model.checkpoints import load_model, load_training_state, save_model, short_hash
from pgesam_live.model.codec import HarmonicCodec
from pgesam_live.model.data import instrument_means, load_frames
from pgesam_live.model.synth import Synth

SR = 24000
PITCHES = range(48, 52)
# (instrument_str, family id, family name, spectral tilt, decay per second)
INSTRUMENTS = [("syn_bass_0", 0, "bass", 2.0, 3.0), ("syn_organ_0", 6, "organ", 0.7, 0.0),
               ("syn_flute_0", 2, "flute", 1.5, 0.5)]


def make_tiny_nsynth(root: Path, duration_s: float = 0.5) -> Path:
    """Harmonic notes whose timbre (tilt, decay) differs per instrument, in NSynth layout."""
    t = np.arange(int(duration_s * SR)) / SR
    for split, insts in (("train", INSTRUMENTS), ("valid", INSTRUMENTS[:1]),
                         ("test", INSTRUMENTS[1:2])):
        audio = root / f"nsynth-{split}" / "audio"
        audio.mkdir(parents=True)
        examples = {}
        for i, (name, fam, fam_str, tilt, decay) in enumerate(insts):
            for p in PITCHES:
                f0 = 440.0 * 2 ** ((p - 69) / 12)
                w = sum(np.sin(2 * np.pi * f0 * k * t) / k ** tilt for k in range(1, 9))
                w = 0.3 * w * np.exp(-decay * t) * np.minimum(1.0, t / 0.01)
                note = f"{name}-{p:03d}-100"
                sf.write(audio / f"{note}.wav", w.astype(np.float32), SR)
                examples[note] = {
                    "note_str": note, "pitch": p, "velocity": 100, "instrument": i,
                    "instrument_str": name, "instrument_family": fam,
                    "instrument_family_str": fam_str, "instrument_source": 2,
                    "instrument_source_str": "synthetic", "sample_rate": SR, "qualities": []}
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(examples))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_nsynth(tmp_path_factory.mktemp("nsynth"))


def train_args(stage: str, data: Path, out: Path, *extra: str):  # noqa: ANN201
    """The real CLI parser's Namespace, as `pgesam-live train ...` would build it."""
    ns = build_parser().parse_args(
        ["train", stage, "--data", str(data), "--out", str(out), "--config", "tiny",
         "--pitch-range", "48-51", "--batch-size", "8", "--device", "cpu", *extra])
    ns.progress = False
    return ns


def log_steps(out: Path, stage: str) -> list[int]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["stage"] == stage]


def test_vae_then_transformer_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert T.run_train(train_args("vae", data_dir, out, "--steps", "4", "--ckpt-every",
                                  "2")) == 0
    st = load_training_state(out / "vae.pt")
    assert st["step"] == 4 and st["finished"] and st["stage"] == "vae"
    assert log_steps(out, "vae") == [1, 2, 3, 4]
    fams = {p["name"]: p["family"] for p in st["training_points"]}
    assert fams == {"syn_bass_0": "bass", "syn_organ_0": "organ", "syn_flute_0": "flute"}

    assert T.run_train(train_args("transformer", data_dir, out, "--steps", "3")) == 0
    assert log_steps(out, "transformer") == [1, 2, 3]
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r.get("mse", r.get("total"))) for r in recs)
    models = sorted(out.glob("pgesam_*.pt"))
    assert len(models) == 1
    m = re.fullmatch(r"pgesam_tiny_harmonic-([0-9a-f]{8})\.pt", models[0].name)
    assert m and m.group(1) == short_hash(models[0].read_bytes())

    b = load_model(models[0], "cpu")
    assert b.pitch_range == (48, 51)
    assert b.meta.training["vae_steps"] == 4 and b.meta.training["transformer_steps"] == 3
    assert b.meta.training["transformer_hardware"]["device"] == "cpu"
    assert {p["family"] for p in b.training_points} == {"bass", "organ", "flute"}
    assert b.meta.normalisation["PITCH_SCALE_MIDI"] == 100.0
    # The VAE in the model file is the one the VAE stage finished with.
    vae_sd = load_training_state(out / "vae.pt")["model"]
    assert all(torch.equal(vae_sd[k], v) for k, v in b.vae.state_dict().items())
    audio = Synth(b, "cpu").render(np.array([[0.0, 0.0], [0.2, -0.1]]), [48, 51], seed=0)
    assert audio.shape == (2, b.transformer.cfg.n_frames * 320) and np.isfinite(audio).all()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_training_state(path)["model"]


def test_resume_continues_at_the_right_step(data_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ref = tmp_path / "ref"
    T.run_train(train_args("vae", data_dir, ref, "--steps", "6", "--ckpt-every", "3"))

    # The same run, interrupted (Ctrl-C) during step 5: the state after step 4 is saved.
    out = tmp_path / "crash"
    real, calls = T.vae_losses, {"n": 0}

    def dying(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T, "vae_losses", dying)
    with pytest.raises(KeyboardInterrupt):
        T.run_train(train_args("vae", data_dir, out, "--steps", "6", "--ckpt-every", "3"))
    monkeypatch.setattr(T, "vae_losses", real)
    assert load_training_state(out / "vae.pt")["step"] == 4

    # Without --resume the run directory is not overwritten.
    with pytest.raises(ConfigError, match="--resume"):
        T.run_train(train_args("vae", data_dir, out, "--steps", "6"))

    T.run_train(train_args("vae", data_dir, out, "--resume", "--ckpt-every", "3"))
    st = load_training_state(out / "vae.pt")
    assert st["step"] == 6 and st["finished"]
    # Steps 1-4 logged before the interruption, then 5-6 from the state it saved.
    assert log_steps(out, "vae") == [1, 2, 3, 4, 5, 6]
    # Model, optimiser, step and RNG were restored: the weights equal the uninterrupted run's.
    a, b = _weights(ref / "vae.pt"), _weights(out / "vae.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A finished stage is skipped on --resume.
    T.run_train(train_args("vae", data_dir, out, "--resume"))
    assert log_steps(out, "vae")[-1] == 6 and len(log_steps(out, "vae")) == 6


def test_vae_frames_reads_the_whole_note_and_the_transformer_trains_on_its_map(
        data_dir: Path, tmp_path: Path) -> None:
    """`train vae --vae-frames N`: the VAE reads the first N frames (the tiny config's note
    is 24; the config's VAE reads 16, pooled 2x), its pool scaled; the Transformer stage and
    the model file take that VAE as it is; misuse is refused."""
    out = tmp_path / "run"
    assert T.run_train(train_args("vae", data_dir, out, "--steps", "2",
                                  "--vae-frames", "24")) == 0
    cfg = load_training_state(out / "vae.pt")["model_config"]
    assert (cfg["n_frames"], cfg["time_pool"]) == (24, 3)
    assert T.run_train(train_args("transformer", data_dir, out, "--steps", "2",
                                  "--decoder", "parallel")) == 0
    b = load_model(next(out.glob("pgesam_*.pt")), "cpu")
    assert (b.vae.cfg.n_frames, b.vae.cfg.time_pool) == (24, 3)
    # The map reads the frames after the 16th: changing only those moves a note's point.
    frames = torch.randn(1, 24, b.vae.cfg.frame_dim)
    later = frames.clone()
    later[:, 16:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(b.vae.encode(frames)[0], b.vae.encode(later)[0])
    for stage, extra, match in (("vae", ["--vae-frames", "25"], "a note has 24 frames"),
                                ("vae", ["--vae-frames", "2"], "4..4096"),
                                ("transformer", ["--vae-frames", "24"], "train vae")):
        with pytest.raises(ConfigError, match=match):
            T.run_train(train_args(stage, data_dir, tmp_path / "bad", "--steps", "1", *extra))


def test_transformer_stage_needs_a_vae(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="train vae"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "none", "--steps", "1"))


def test_bad_options_are_config_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOW-HIGH"):
        T.parse_pitch_range("48..72")
    assert T.parse_pitch_range("36-84") == (36, 84)
    ns = train_args("vae", data_dir, tmp_path / "x")
    ns.config = "huge"
    with pytest.raises(ConfigError, match="tiny, small, paper"):
        T.run_train(ns)


def test_input_noise_reaches_the_inputs_and_is_recorded(data_dir: Path, tmp_path: Path) -> None:
    """--input-noise perturbs the teacher-forced inputs (so the first step's loss differs from
    a clean run's on the same weights and batch) and is kept in the model's training record."""
    base = tmp_path / "vae"
    T.run_train(train_args("vae", data_dir, base, "--steps", "5"))
    first_mse = {}
    for noise in ("0", "0.3"):
        out = tmp_path / f"n{noise}"
        out.mkdir()
        shutil.copy(base / "vae.pt", out / "vae.pt")
        T.run_train(train_args("transformer", data_dir, out, "--steps", "2", "--resume",
                               "--input-noise", noise))
        rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
        first_mse[noise] = next(r["mse"] for r in rows if r["stage"] == "transformer")
        model = load_model(next(out.glob("pgesam_*.pt")))
        assert model.meta.training["transformer_input_noise"] == float(noise)
    assert first_mse["0.3"] > first_mse["0"]
    with pytest.raises(ConfigError, match="input-noise"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "n0", "--input-noise", "-1"))


def test_self_feed_replaces_whole_groups_with_the_models_own_predictions() -> None:
    """Parallel scheduled sampling: p=0 keeps the true inputs; p=1 with one pass gives the
    teacher-forced prediction; with two passes, the prediction made from that prediction; a
    replaced group is replaced whole (both frames of a 2-frame group)."""
    from pgesam_live.model.transformer import FrameTransformer, TransformerConfig

    torch.manual_seed(0)
    tr = FrameTransformer(TransformerConfig(frame_dim=6, d_model=16, n_heads=2, n_enc_layers=1,
                                            n_dec_layers=1, d_ff=32, n_frames=8, pitch_min=60,
                                            pitch_max=61, frames_per_step=2)).eval()
    pts, pitches = torch.rand(3, 2), torch.tensor([60, 61, 60])
    x = torch.rand(3, 8, 6)
    assert torch.equal(T._self_fed_inputs(tr, pts, pitches, x, 0.0, 2), x)
    one = tr(pts, pitches, x)
    assert torch.allclose(T._self_fed_inputs(tr, pts, pitches, x, 1.0, 1), one)
    assert torch.allclose(T._self_fed_inputs(tr, pts, pitches, x, 1.0, 2), tr(pts, pitches, one))
    torch.manual_seed(3)
    half = T._self_fed_inputs(tr, pts, pitches, x, 0.5, 1)
    fed = ~torch.isclose(half, x).all(-1)  # [B, T]: frames that were replaced
    assert torch.equal(fed[:, 0::2], fed[:, 1::2])  # whole groups
    assert 0 < int(fed.sum()) < fed.numel()
    assert torch.allclose(half[fed], one[fed])


def test_self_feed_is_recorded_and_checked(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sf"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    T.run_train(train_args("transformer", data_dir, out, "--steps", "2", "--self-feed", "0.5",
                           "--self-feed-passes", "3"))
    training = load_model(next(out.glob("pgesam_*.pt"))).meta.training
    assert training["transformer_self_feed"] == 0.5
    assert training["transformer_self_feed_passes"] == 3
    with pytest.raises(ConfigError, match="self-feed must"):
        T.run_train(train_args("transformer", data_dir, out, "--self-feed", "1.5"))
    with pytest.raises(ConfigError, match="self-feed-passes"):
        T.run_train(train_args("transformer", data_dir, out, "--self-feed-passes", "0"))


def test_fine_tune_restarts_the_schedule_from_a_finished_run(data_dir: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "ft"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    T.run_train(train_args("transformer", data_dir, out, "--steps", "3"))
    before = _weights(out / "transformer.pt")
    T.run_train(train_args("transformer", data_dir, out, "--resume", "--fine-tune",
                           "--steps", "2", "--lr", "1e-3", "--self-feed", "0.5"))
    st = load_training_state(out / "transformer.pt")
    assert st["step"] == 2 and st["previous_steps"] == 3 and st["finished"]
    assert any(not torch.equal(before[k], v) for k, v in _weights(out / "transformer.pt").items())
    # The phase's schedule restarted: its log counts steps 1..2 again, warm-up from lr/warm.
    rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    tr_steps = [r["step"] for r in rows if r["stage"] == "transformer"]
    assert tr_steps[-2:] == [1, 2] and max(tr_steps) == 3
    newest = max(out.glob("pgesam_*.pt"), key=lambda p: p.stat().st_mtime)
    training = load_model(newest).meta.training
    assert training["transformer_steps"] == 5 and training["transformer_last_phase_steps"] == 2
    with pytest.raises(ConfigError, match="needs --steps"):
        T.run_train(train_args("transformer", data_dir, out, "--resume", "--fine-tune"))
    with pytest.raises(ConfigError, match="goes with"):
        T.run_train(train_args("transformer", data_dir, out, "--fine-tune", "--steps", "2"))
    vae_only = tmp_path / "vae_only"
    vae_only.mkdir()
    shutil.copy(out / "vae.pt", vae_only / "vae.pt")
    with pytest.raises(ConfigError, match="no Transformer run"):
        T.run_train(train_args("transformer", data_dir, vae_only, "--resume", "--fine-tune",
                               "--steps", "2"))


def test_batch_sampler_groups_and_shards() -> None:
    inst = torch.tensor([0] * 5 + [1] * 3 + [2] * 7 + [3] * 2)
    s = T.BatchSampler(inst, batch_size=8, seed=0, notes_per_group=4)
    for _ in range(20):
        idx = s.next()
        assert idx.shape == (8,)
        groups = inst[idx].view(2, 4)
        assert (groups == groups[:, :1]).all()  # each group is one instrument
        assert groups[0, 0] != groups[1, 0]  # different instruments while there are enough
        a, b = s.shard(idx, 0, 2), s.shard(idx, 1, 2)
        assert sorted(torch.cat([a, b]).tolist()) == sorted(idx.tolist())
        assert (inst[a] == inst[a][0]).all()  # a shard keeps a group whole
    # Same seed, same batches (ranks agree); a saved state replays them.
    s1, s2 = T.BatchSampler(inst, 8, 3, 4), T.BatchSampler(inst, 8, 3, 4)
    assert torch.equal(s1.next(), s2.next())
    st = s1.state()
    x = s1.next()
    s1.load_state(st)
    assert torch.equal(s1.next(), x)


def test_learning_rate_schedules() -> None:
    lrs = [T.vae_lr(1.0, s, 100) for s in (0, 49, 50, 60, 75, 90, 99)]
    assert lrs == [1.0, 1.0, 0.5, 0.25, 0.125, 1 / 32, 1 / 32]
    assert T.transformer_lr(1.0, 0, 1000) == pytest.approx(1 / 50)
    assert T.transformer_lr(1.0, 49, 1000) == pytest.approx(1.0)
    assert T.transformer_lr(1.0, 999, 1000) == pytest.approx(0.1, abs=1e-3)


def test_torchrun_two_processes(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "PYO_GUI_WX": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pgesam_live", "train", "vae", "--data", str(data_dir), "--out", str(out),
           "--config", "tiny", "--pitch-range", "48-51", "--steps", "2", "--batch-size", "8",
           "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    st = load_training_state(out / "vae.pt")
    assert st["step"] == 2 and st["finished"]
    assert st["hardware"]["world_size"] == 2
    assert log_steps(out, "vae") == [1, 2]  # only rank 0 writes


def test_init_lora_fine_tune_of_a_model_file_packs_small(data_dir: Path, tmp_path: Path) -> None:
    from pgesam_live.model import checkpoints as ck
    from pgesam_live.model.lora import lora_targets

    out = tmp_path / "base"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    T.run_train(train_args("transformer", data_dir, out, "--steps", "2"))
    base = next(out.glob("pgesam_*.pt"))
    ft = tmp_path / "ft"
    T.run_train(train_args("transformer", data_dir, ft, "--init", str(base), "--lora-rank", "2",
                           "--steps", "3", "--lr", "1e-2", "--self-feed", "0.5"))
    st = load_training_state(ft / "transformer.pt")
    assert st["lora_rank"] == 2 and st["finished"] and st["previous_steps"] == 2
    # Resuming with more steps restores the factors: the difference stays rank 2.
    with pytest.raises(ConfigError, match="LoRA rank 2"):
        T.run_train(train_args("transformer", data_dir, ft, "--resume", "--steps", "5",
                               "--init", str(base), "--lora-rank", "3"))
    T.run_train(train_args("transformer", data_dir, ft, "--resume", "--steps", "5"))
    model = max(ft.glob("pgesam_*.pt"), key=lambda p: p.stat().st_mtime)
    b0, b1 = load_model(base), load_model(model)
    training = b1.meta.training
    assert training["transformer_steps"] == 7 and training["transformer_lora_rank"] == 2
    assert [p["steps"] for p in training["phases"]] == [2, 5]
    assert training["phases"][1]["init"] == base.stem
    assert training["vae_steps"] == 3
    assert all(torch.equal(v, b0.vae.state_dict()[k]) for k, v in b1.vae.state_dict().items())
    s0, s1 = b0.transformer.state_dict(), b1.transformer.state_dict()
    for name, _ in lora_targets(b1.transformer):
        sv = torch.linalg.svdvals((s1[f"{name}.weight"] - s0[f"{name}.weight"]).double())
        assert float(sv[0]) > 0 and float(sv[2:].max()) < 1e-3 * float(sv[0]), name
    # Packed against its init: float16 factors, small, and the same notes.
    packed = ck.pack_model(model, base, base.parent)
    payload = ck._read_payload(packed, packed.read_bytes(), ck.FORMAT)
    assert set(payload["transformer_delta"]["lowrank"]["keys"]) == {
        f"{n}.weight" for n, _ in lora_targets(b1.transformer)}
    b2 = load_model(packed)
    pts, pitches = torch.tensor([[0.1, -0.2]]), torch.tensor([49])
    ref = b1.transformer.generate(pts, pitches, n_frames=8)
    moved = float((b0.transformer.generate(pts, pitches, n_frames=8) - ref).abs().max())
    assert float((b2.transformer.generate(pts, pitches, n_frames=8) - ref).abs().max()) \
        < 0.05 * moved
    # A chain: a fine-tune of the packed file, packed against it, loads through both bases.
    ft2 = tmp_path / "ft2"
    T.run_train(train_args("transformer", data_dir, ft2, "--init", str(packed), "--lora-rank",
                           "2", "--steps", "2", "--lr", "1e-2"))
    full2 = next(ft2.glob("pgesam_*.pt"))
    packed2 = ck.pack_model(full2, packed, packed.parent)
    b3, b4 = load_model(packed2), load_model(full2)
    assert b3.meta.training["transformer_steps"] == 9
    for k, v in b4.transformer.state_dict().items():
        assert torch.allclose(b3.transformer.state_dict()[k], v, atol=1e-4), k
    for bad, match in ((["--lora-rank", "2"], "goes with --init"),
                       # moving a decoder onto another map: the parallel decoder's alone
                       (["--init", str(base), "--vae", str(base)], "needs the parallel"),
                       (["--init", str(base), "--lora-rank", "0"], "1..256")):
        with pytest.raises(ConfigError, match=match):
            T.run_train(train_args("transformer", data_dir, tmp_path / "bad", *bad))
    with pytest.raises(ConfigError, match="--init goes with"):
        T.run_train(train_args("vae", data_dir, tmp_path / "bad", "--init", str(base)))


def _script(name: str):  # noqa: ANN202
    """scripts/<name>.py as a module (a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[2] / f"scripts/{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _remote_finetune():  # noqa: ANN202
    """scripts/remote_finetune.py as a module."""
    return _script("remote_finetune")


def test_portable_frames_round_trip_and_train_without_the_audio(data_dir: Path,
                                                                tmp_path: Path) -> None:
    """scripts/remote_finetune.py: export -> one file; train from it alone (what a lent GPU
    machine without the data set runs)."""
    rf = _remote_finetune()
    out = tmp_path / "base"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    T.run_train(train_args("transformer", data_dir, out, "--steps", "2"))
    model = next(out.glob("pgesam_*.pt"))
    portable = tmp_path / "frames.xz"
    rf.export(data_dir, model, portable)
    got = rf.load_portable(portable, torch.device("cpu"))
    ns = build_parser().parse_args(["train", "transformer", "--data", str(data_dir),
                                    "--init", str(model), "--device", "cpu"])
    want = T.load_train_data(T.TrainOptions.from_namespace(ns), load_model(model).codec,
                             (48, 51), 24, torch.device("cpu"), T.setup_dist("cpu"))
    assert got.frames.shape == want.frames.shape
    step = (want.frames.amax((0, 1)) - want.frames.amin((0, 1))) / 255
    assert bool(((got.frames - want.frames).abs() <= step / 2 + 1e-6).all())
    assert torch.equal(got.pitch, want.pitch) and torch.equal(got.instrument, want.instrument)
    assert got.instrument_names == want.instrument_names
    ft = tmp_path / "ft"
    assert rf.train(portable, 0.0, ["--init", str(model), "--out", str(ft), "--device", "cpu",
                                    "--steps", "2", "--batch-size", "4", "--lora-rank", "2"]) == 0
    assert load_model(next(ft.glob("pgesam_*.pt"))).meta.training["transformer_steps"] == 4
    assert T.load_train_data is not None and T.load_train_data.__name__ == "load_train_data"


def test_a_run_on_another_runs_vae_resumes_and_names_missing_files(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vae_run = tmp_path / "v"
    T.run_train(train_args("vae", data_dir, vae_run, "--steps", "2"))
    out = tmp_path / "t"
    T.run_train(train_args("transformer", data_dir, out, "--steps", "2", "--vae",
                           str(vae_run / "vae.pt")))
    # Resumed without --vae: the run remembers whose VAE it conditions on.
    T.run_train(train_args("transformer", data_dir, out, "--steps", "3", "--resume"))
    assert load_training_state(out / "transformer.pt")["step"] == 3
    # Nothing to do: said, and the model file is not rewritten under a new name.
    before = sorted(p.name for p in out.glob("pgesam_*.pt"))
    T.run_train(train_args("transformer", data_dir, out, "--steps", "2", "--resume"))
    assert "nothing to train" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("pgesam_*.pt")) == before
    with pytest.raises(CheckpointError, match="--init .*no such file"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "i", "--steps", "1",
                               "--init", str(tmp_path / "nosuch.pt")))


def test_pitch_ranges_take_note_names() -> None:
    from pgesam_live.model.soundfont import parse_pitches

    assert T.parse_pitch_range("C3-C5") == (48, 72) == T.parse_pitch_range("48:72")
    assert parse_pitches("C4-D4") == [60, 61, 62] and parse_pitches("C4,E4,G4") == [60, 64, 67]
    with pytest.raises(ConfigError, match="C2-C6"):
        parse_pitches("H4-C5")


def test_ctrl_c_ends_training_after_a_whole_step(data_dir: Path, tmp_path: Path) -> None:
    """SIGINT to `pgesam-live train`: exit 130 after the step under way, the state saved at
    that step, and the line to resume printed."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pgesam_live", "train", "vae", "--data", str(data_dir),
           "--out", str(out), "--config", "tiny", "--pitch-range", "48-51", "--batch-size",
           "8", "--device", "cpu", "--steps", "100000", "--ckpt-every", "100000"]
    # As from a terminal: SIGINT at its default even when this test runs in a background job
    # (where the shell leaves it ignored, and training then rightly ignores Ctrl-C too).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PGESAM_TORCH_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(300):  # until it has logged steps
            time.sleep(0.2)
            if (out / "log.jsonl").is_file() and len(log_steps(out, "vae")) >= 3:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    step = load_training_state(out / "vae.pt")["step"]
    assert f"interrupted at step {step} of 100000" in err and "--resume" in err
    assert step >= 3 and log_steps(out, "vae")[-1] <= step


def test_options_that_would_go_unused_or_out_of_range_are_refused() -> None:
    import argparse

    base = {"stage": "vae", "data": "d", "out": "o"}
    for extra, match in (({"self_feed": 0.5}, "--self-feed: Transformer options"),
                         ({"frames_per_step": 2}, "--frames-per-step: Transformer options"),
                         ({"workers": -1}, "--workers must be in 0..64"),
                         ({"stage": "transformer", "frames_per_step": 0},
                          "--frames-per-step must be in 1..64"),
                         ({"max_instruments_per_family": 0}, "must be >= 1")):
        with pytest.raises(ConfigError, match=match):
            T.TrainOptions.from_namespace(argparse.Namespace(**{**base, **extra}))


def test_loudness_weight_weighs_the_loudness_channel_alone() -> None:
    """`--loudness-weight`: the audible loss's loudness term scales with it; an error in the
    harmonic distribution costs the same whatever it is; the default is the old weight."""
    from pgesam_live.model.codec import HarmonicCodec

    codec = HarmonicCodec()
    w = T.channel_weights("harmonic", codec.dim, torch.device("cpu"))
    t = torch.full((1, 20, codec.dim), 0.5)
    loud, dist = t.clone(), t.clone()
    loud[..., 1] += 0.02  # 2.8 dB louder
    dist[..., 2] += 0.05  # the same error on every frame: the difference term stays 0

    def loss(p: torch.Tensor, lw: float | None) -> float:
        return float(T.audible_frame_loss(p, t, codec, w, 1.0, lw))

    assert loss(loud, None) == pytest.approx(loss(loud, 10.0))
    assert loss(loud, 200.0) == pytest.approx(20 * loss(loud, 10.0))
    assert loss(dist, 200.0) == pytest.approx(loss(dist, 10.0)) and loss(dist, 10.0) > 0
    with pytest.raises(ConfigError, match="--loudness-weight must be in"):
        T.TrainOptions.from_namespace(train_args("transformer", Path("d"), Path("o"),
                                                 "--loudness-weight", "-1"))


def test_log_distribution_loss_weighs_a_weak_harmonic_by_its_level() -> None:
    """A harmonic at -40 dB re the total wrong by 10 dB costs about what the strongest one
    wrong by 10 dB costs (the linear audible loss: 1 % of it); silent frames and harmonics
    above Nyquist cost nothing."""
    from pgesam_live.model.codec import HarmonicCodec

    codec = HarmonicCodec()
    k = codec.n_harmonics
    t = torch.zeros(1, 10, codec.dim)
    t[..., 0] = (60 - codec.PITCH_OFFSET_MIDI) / codec.PITCH_SCALE_MIDI  # C4
    t[..., 1] = 0.6  # -56 dB: audible
    share = torch.full((k,), 1e-2)
    share[0] = 1.0
    t[..., 2:2 + k] = share / share.sum()
    assert float(T.log_distribution_loss(t, t, codec)) < 1e-6
    strong, weak = t.clone(), t.clone()
    strong[..., 2] *= 10 ** (-10 / 20)
    weak[..., 3] *= 10 ** (-10 / 20)
    ls, lw = (float(T.log_distribution_loss(p, t, codec)) for p in (strong, weak))
    assert lw > 0.5 * ls > 0
    w = T.channel_weights("harmonic", codec.dim, torch.device("cpu"))
    lin_s, lin_w = (float(T.audible_frame_loss(p, t, codec, w, 0.0)) for p in (strong, weak))
    assert lin_w < 0.01 * lin_s
    silent = t.clone()
    silent[..., 1] = 0.0
    assert float(T.log_distribution_loss(weak.clone().index_fill_(2, torch.tensor([1]), 0.0),
                                         silent, codec)) == 0.0
    high = t.clone()
    high[..., 2 + k - 1] = 0.5  # harmonic 64 of C4: 16.7 kHz, above Nyquist
    assert float(T.log_distribution_loss(high, t, codec)) < 1e-6


def test_release_loudness_loss_counts_only_the_release_window() -> None:
    """An error in the 0.4 s after the note-off (3 s) costs; the same error before it, or
    after the window, costs nothing; below the floor only overshoot counts; a note shorter
    than its note-off costs nothing."""
    from pgesam_live.model.codec import HarmonicCodec

    codec = HarmonicCodec()
    t = torch.zeros(2, 300, codec.dim)
    t[..., 1] = 0.6
    assert float(T.release_loudness_loss(t, t, codec)) == 0.0
    off = codec.frames_for(3.0)
    win = codec.frames_for(T.RELEASE_WINDOW_S)
    for a, b, costs in ((off, off + win, True), (0, off, False), (off + win, 300, False)):
        p = t.clone()
        p[:, a:b, 1] += 0.05
        got = float(T.release_loudness_loss(p, t, codec))
        assert (got == pytest.approx(0.05 ** 2, rel=1e-4)) if costs else got == 0.0
    floor = (T.LOUD_FLOOR_DB + codec.LOUD_OFFSET_DB) / codec.LOUD_SCALE_DB
    quiet = t.clone()
    quiet[..., 1] = floor - 0.1  # the original is silent after its note-off
    under, over = quiet.clone(), quiet.clone()
    under[..., 1] -= 0.1
    over[:, off:off + win, 1] = floor + 0.1
    assert float(T.release_loudness_loss(under, quiet, codec)) == 0.0
    assert float(T.release_loudness_loss(over, quiet, codec)) == pytest.approx(0.01, rel=1e-4)
    assert float(T.release_loudness_loss(t[:, :off], t[:, :off] + 1, codec)) == 0.0
    with pytest.raises(ConfigError, match="--release-weight must be in"):
        T.TrainOptions.from_namespace(train_args("transformer", Path("d"), Path("o"),
                                                 "--release-weight", "-1"))


def test_parallel_decoder_trains_end_to_end_and_from_the_portable_frames(
        data_dir: Path, tmp_path: Path) -> None:
    """`--decoder parallel`: a new Transformer run on a VAE, the audible loss (with the
    spectral term), a model file that loads and renders; the remote script's deadline probe
    builds the same decoder without --init."""
    out = tmp_path / "run"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    assert T.run_train(train_args("transformer", data_dir, out, "--steps", "3", "--decoder",
                                  "parallel", "--spectral-weight", "0.5", "--point-noise",
                                  "0.02", "--loudness-weight", "40")) == 0
    model = next(out.glob("pgesam_*.pt"))
    b = load_model(model, "cpu")
    assert b.transformer.cfg.decoder == "parallel"
    audio = Synth(b, "cpu").render(np.array([[0.0, 0.0]]), [50], seed=0)
    assert audio.shape == (1, 24 * 320) and np.isfinite(audio).all()
    # The loss options are the run's: recorded, and kept by a resume that does not restate them.
    st = load_training_state(out / "transformer.pt")
    assert st["loss_options"] == {"delta_weight": 1.0, "spectral_weight": 0.5,
                                  "point_noise": 0.02, "pitch_weight": 300.0,
                                  "loudness_weight": 40.0, "log_dist_weight": 0.0,
                                  "instrument_points": 0.0, "release_weight": 0.0,
                                  "blend_points": 0.0, "blend_power": 2.0,
                                  "contrast_weight": 0.0}
    assert T.run_train(train_args("transformer", data_dir, out, "--resume", "--steps", "4")) == 0
    assert load_training_state(out / "transformer.pt")["loss_options"] == st["loss_options"]
    assert b.meta.training["transformer_loss_options"]["spectral_weight"] == 0.5
    # Resuming names the decoder it is; asking for the other one is refused.
    with pytest.raises(ConfigError, match="decoder"):
        T.run_train(train_args("transformer", data_dir, out, "--resume", "--steps", "5",
                               "--decoder", "autoregressive"))
    with pytest.raises(ConfigError, match="self-feed"):
        T.TrainOptions.from_namespace(train_args("transformer", data_dir, out, "--decoder",
                                                 "parallel", "--self-feed", "0.5"))
    rf = _remote_finetune()
    portable = tmp_path / "frames.xz"
    rf.export(data_dir, model, portable)
    ft = tmp_path / "ft"
    assert rf.train(portable, 5.0, ["--vae", str(model), "--out", str(ft), "--device", "cpu",
                                    "--batch-size", "4", "--decoder", "parallel",
                                    "--config", "tiny"]) == 0
    got = load_model(next(ft.glob("pgesam_*.pt")))
    assert got.transformer.cfg.decoder == "parallel"
    assert got.meta.training["transformer_steps"] >= 1
    # What comes back from the lent machine: the Transformer alone in float16, rebuilt here
    # with the base's VAE into a model file that renders like the original (within float16).
    small = tmp_path / "slim.pt"
    trained = next(ft.glob("pgesam_*.pt"))
    rf.slim(trained, small)
    rebuilt = load_model(rf.unslim(small, model, tmp_path / "back"))
    assert rebuilt.transformer.cfg == got.transformer.cfg
    pts, pit = torch.tensor([[0.1, -0.2]]), torch.tensor([49])
    a = got.transformer.generate(pts, pit)
    b = rebuilt.transformer.generate(pts, pit)
    assert float((a - b).abs().max()) < 1e-2
    # What travels there when the working tree must stay small: the whole model in float16,
    # widened there into a model file that `--init` reads and that renders like the original.
    travel = tmp_path / "init16.pt"
    rf.half(trained, travel)
    assert travel.stat().st_size < 0.6 * trained.stat().st_size
    widened = load_model(rf.widen(travel, tmp_path / "init.pt"))
    c = widened.transformer.generate(pts, pit)
    assert float((a - c).abs().max()) < 1e-2
    assert widened.meta.training_points == got.meta.training_points


def test_instrument_points_condition_notes_on_their_instruments_mean_point(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--instrument-points 1`: every training note is conditioned on its instrument's point
    (one point per instrument, the training point it plays at); 0 (the paper's): on its own
    point (one per note). Refused for the autoregressive decoder, and out of [0, 1]."""
    from pgesam_live.model.parallel import ParallelFrameTransformer

    seen: list[torch.Tensor] = []
    forward = ParallelFrameTransformer.forward

    def spy(self: ParallelFrameTransformer, points: torch.Tensor, *a: Any, **k: Any) -> Any:
        seen.append(points.detach().clone())
        return forward(self, points, *a, **k)

    monkeypatch.setattr(ParallelFrameTransformer, "forward", spy)
    out = tmp_path / "run"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    distinct = {}
    for share, run in (("0", "note"), ("1", "inst")):
        seen.clear()
        assert T.run_train(train_args("transformer", data_dir, out, "--steps", "6",
                                      "--decoder", "parallel", "--instrument-points", share,
                                      "--out", str(tmp_path / run), "--vae",
                                      str(out / "vae.pt"))) == 0
        pts = torch.cat(seen).reshape(-1, 2)
        distinct[run] = len({tuple(round(float(v), 6) for v in row) for row in pts})
        st = load_training_state(tmp_path / run / "transformer.pt")
        assert st["loss_options"]["instrument_points"] == float(share)
    n_inst = len(load_model(next((tmp_path / "inst").glob("pgesam_*.pt"))).training_points)
    assert distinct["inst"] <= n_inst < distinct["note"]
    _refused_out_of_range_and_autoregressive("--instrument-points", "1.5", data_dir, out,
                                             tmp_path)


def _refused_out_of_range_and_autoregressive(option: str, too_big: str, data_dir: Path,
                                             out: Path, tmp_path: Path) -> None:
    """A parallel decoder's share option (`out` holds a VAE run) is refused above its range
    and for the autoregressive decoder, naming the option."""
    name = option.removeprefix("--")
    with pytest.raises(ConfigError, match=name):
        T.TrainOptions.from_namespace(train_args("transformer", data_dir, out, option, too_big))
    with pytest.raises(ConfigError, match=name):
        T.run_train(train_args("transformer", data_dir, tmp_path / "ar", "--vae",
                               str(out / "vae.pt"), "--steps", "2", "--decoder",
                               "autoregressive", option, "0.5"))


def test_map_blender_plays_an_instrument_at_its_point_and_a_morph_between() -> None:
    """MapBlender's targets: at an instrument's own point its note at that pitch; halfway
    between two with a third far off, mostly those two, equally; only instruments that have
    the pitch take part; `apply` replaces about the share asked and keeps the rest."""
    inst = torch.tensor([0, 0, 1, 1, 2, 3])
    pitch = torch.tensor([60, 61, 60, 61, 61, 60])
    mu = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.2, 0.0], [0.2, 0.0], [0.1, 0.0], [5.0, 5.0]])
    frames = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 3, 2).clone()
    b = T.MapBlender(mu, inst, pitch)
    at = b.blend(torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.1, 0.0]]),
                 torch.tensor([60, 61, 60]), frames)
    assert float(at[0, 0, 0]) == pytest.approx(0.0, abs=0.01)       # instrument 0's C4
    assert float(at[1, 0, 0]) == pytest.approx(3.0, abs=0.01)       # instrument 1's C#4
    # (0.1, 0): instrument 2 sits there but has no note at 60: 0 and 1 share it, 3 is far
    assert float(at[2, 0, 0]) == pytest.approx(1.0, abs=0.01)
    # the box: the instruments' points widened by BOX_MARGIN
    assert torch.allclose(b.lo, torch.tensor([-0.25, -0.25])) and float(b.hi[0]) == 5.25
    gen = torch.Generator().manual_seed(0)
    pts = mu[torch.zeros(400, dtype=torch.long)]
    x = frames[torch.zeros(400, dtype=torch.long)]
    p2, x2 = b.apply(pts, x, frames, torch.full((400,), 60), 0.25, gen)
    moved = (p2 != pts).any(1)
    assert 60 < int(moved.sum()) < 140 and bool((x2[~moved] == 0).all())
    assert bool(((p2 >= b.lo) & (p2 <= b.hi)).all())
    # Several notes of an instrument at a pitch (velocities): each blend draws one of them.
    two = T.MapBlender(torch.cat([mu, mu[:1]]), torch.cat([inst, inst[:1]]),
                       torch.cat([pitch, pitch[:1]]))
    frames7 = torch.arange(7, dtype=torch.float32)[:, None, None].expand(7, 3, 2).clone()
    at0 = two.blend(torch.zeros(200, 2), torch.full((200,), 60), frames7,
                    torch.Generator().manual_seed(1))[:, 0, 0]
    assert {round(float(v)) for v in at0} == {0, 6}  # note 0 and its second velocity, note 6
    # --blend-power: a quarter of the way from instrument 0 to 1, inverse square gives 0 a
    # weight of 0.9 (target 0.9 * 0 + 0.1 * 2); power 8 keeps it nearer instrument 0's own note.
    quarter = (torch.tensor([[0.05, 0.0]]), torch.tensor([60]))
    soft = float(b.blend(*quarter, frames)[0, 0, 0])
    sharp = float(T.MapBlender(mu, inst, pitch, power=8).blend(*quarter, frames)[0, 0, 0])
    assert soft == pytest.approx(0.2, abs=0.01) and sharp == pytest.approx(0.0, abs=0.01)
    # A very high power is the nearest instrument alone, with no underflow to 0 / 0.
    far = T.MapBlender(mu, inst, pitch, power=256).blend(torch.tensor([[0.09, 0.0]]),
                                                          torch.tensor([60]), frames)
    assert float(far[0, 0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_blend_points_trains_and_is_recorded(data_dir: Path, tmp_path: Path) -> None:
    """`--blend-points`: a parallel run records it; refused for the autoregressive decoder,
    with --train-blocks (the cached trunk holds no other points) and out of [0, 1]."""
    out = tmp_path / "run"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    assert T.run_train(train_args("transformer", data_dir, out, "--steps", "3", "--decoder",
                                  "parallel", "--blend-points", "0.5")) == 0
    st = load_training_state(out / "transformer.pt")
    assert st["loss_options"]["blend_points"] == 0.5
    assert st["loss_options"]["blend_power"] == 2.0
    _refused_out_of_range_and_autoregressive("--blend-points", "2", data_dir, out, tmp_path)
    with pytest.raises(ConfigError, match=r"blend-power must be in \[1, 256\]"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "p", "--decoder", "parallel",
                               "--blend-points", "0.5", "--blend-power", "0.5"))
    with pytest.raises(ConfigError, match="blend-power"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "p", "--decoder", "parallel",
                               "--blend-points", "0.5", "--blend-power", "300"))
    with pytest.raises(ConfigError, match="give that too"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "p", "--decoder", "parallel",
                               "--vae", str(out / "vae.pt"), "--blend-power", "4",
                               "--steps", "2"))
    model = next(out.glob("pgesam_*.pt"))
    with pytest.raises(ConfigError, match="blend-points"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "top", "--init", str(model),
                               "--train-blocks", "1", "--blend-points", "0.5", "--steps", "2"))


def test_rival_notes_are_the_nearest_other_instrument_at_the_pitch() -> None:
    """MapBlender.rival_notes: the nearest instrument on the map that is not the note's own
    and has a note at its pitch; -1 where none has."""
    inst = torch.tensor([0, 0, 1, 1, 2, 3])
    pitch = torch.tensor([60, 61, 60, 61, 61, 62])
    mu = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.2, 0.0], [0.2, 0.0], [0.1, 0.0], [5.0, 5.0]])
    b = T.MapBlender(mu, inst, pitch)
    got = b.rival_notes(torch.tensor([0, 0, 1, 2, 3]), torch.tensor([60, 61, 61, 61, 62]))
    # 0 at 60: 2 is nearer but has no 60, so 1's C4 (note 2); 0 at 61: 2's (note 4);
    # 1 at 61: 2's; 2 at 61: 0 and 1 lie equally far, the first (note 1); 3 at 62: nobody
    assert got.tolist() == [2, 4, 4, 1, -1]


def test_contrast_loss_is_zero_nearer_its_own_and_pushes_from_the_rival() -> None:
    """contrast_loss: 0 for a note that is its own target (or nearer it than the rival), > 0
    for one that is the rival, and its gradient moves that note toward its own spectrum;
    notes not kept do not count."""
    codec = HarmonicCodec(n_harmonics=8, n_noise_bands=4)
    t = 5
    own = torch.zeros(2, t, codec.dim)
    own[..., 0] = (60 - codec.PITCH_OFFSET_MIDI) / codec.PITCH_SCALE_MIDI
    own[..., 1] = 0.8  # audible
    rival = own.clone()
    own[..., 2:10] = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.03, 0.01, 0.005, 0.005])
    rival[..., 2:10] = torch.tensor([0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05])
    keep = torch.tensor([True, True])
    assert float(T.contrast_loss(own.clone(), own, rival, keep, codec)) == 0.0
    nearer_own = 0.8 * own + 0.2 * rival
    assert float(T.contrast_loss(nearer_own, own, rival, keep, codec)) == 0.0
    pred = rival.clone().requires_grad_(True)
    loss = T.contrast_loss(pred, own, rival, keep, codec)
    assert float(loss) > 0.01
    loss.backward()
    assert pred.grad is not None
    step = pred.detach() - 1e-2 * pred.grad / pred.grad.abs().max()
    d_before = float((pred.detach() - own)[..., 2:10].abs().sum())
    assert float((step - own)[..., 2:10].abs().sum()) < d_before
    assert float(T.contrast_loss(pred, own, rival, torch.tensor([False, False]), codec)) == 0.0


def test_contrast_weight_trains_and_is_recorded(data_dir: Path, tmp_path: Path) -> None:
    """`--contrast-weight`: a parallel run trains with it and records it; refused for the
    autoregressive decoder, out of [0, 100] and with --train-blocks."""
    out = tmp_path / "run"
    T.run_train(train_args("vae", data_dir, out, "--steps", "3"))
    assert T.run_train(train_args("transformer", data_dir, out, "--steps", "3", "--decoder",
                                  "parallel", "--contrast-weight", "5")) == 0
    st = load_training_state(out / "transformer.pt")
    assert st["loss_options"]["contrast_weight"] == 5.0
    _refused_out_of_range_and_autoregressive("--contrast-weight", "200", data_dir, out,
                                             tmp_path)
    model = next(out.glob("pgesam_*.pt"))
    with pytest.raises(ConfigError, match="contrast-weight"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "top", "--init", str(model),
                               "--train-blocks", "1", "--contrast-weight", "5", "--steps", "2"))


def test_train_blocks_with_a_map_grid_trains_only_the_top_of_an_init_model(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--init M --train-blocks 1 --map-grid 4,8`: a grid grows into the last block, which
    trains with the output layer on the cached trunk; the frozen blocks stay the init's; the
    model file keeps its grid, renders, resumes; bad combinations are refused."""
    from pgesam_live.model.parallel import ParallelFrameTransformer

    out = tmp_path / "run"
    T.run_train(train_args("vae", data_dir, out, "--steps", "2"))
    T.run_train(train_args("transformer", data_dir, out, "--steps", "2", "--decoder",
                           "parallel"))
    base_path = next(out.glob("pgesam_*.pt"))
    base = load_model(base_path).transformer
    ft = tmp_path / "ft"
    assert T.run_train(train_args("transformer", data_dir, ft, "--init", str(base_path),
                                  "--train-blocks", "1", "--map-grid", "4,8",
                                  "--instrument-points", "0.5", "--steps", "4",
                                  "--lr", "1e-2", "--ckpt-every", "2")) == 0
    got = load_model(next(ft.glob("pgesam_*.pt")))
    tr = got.transformer
    assert isinstance(tr, ParallelFrameTransformer) and isinstance(base, ParallelFrameTransformer)
    assert tr.cfg.map_grid == (4, 8) and tr.cfg.map_grid_from_block == len(tr.blocks) - 1
    assert tr.map_grid is not None and float(tr.map_grid.proj.weight.abs().sum()) > 0
    frozen, trained = tr.blocks[0].state_dict(), tr.blocks[-1].state_dict()
    assert all(torch.equal(v, base.blocks[0].state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, base.blocks[-1].state_dict()[k]) for k, v in trained.items())
    assert torch.equal(tr.point_mlp[0].weight, base.point_mlp[0].weight)
    assert got.meta.training["transformer_train_blocks"] == 1
    # The grid entries no training point reads were filled from the read ones (not left at
    # their random start): some of the 5 x 5 + 9 x 9 entries, not all.
    assert 0 < got.meta.training["map_grid_filled_entries"] < 25 + 81
    audio = Synth(got, "cpu").render(np.array([[0.1, -0.1]]), [50], seed=0)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # The cached trunk and the top give what the whole pass gives.
    pts, pit = torch.tensor([[0.1, -0.2], [0.3, 0.2]]), torch.tensor([48, 51])
    h, c = tr.trunk(pts, pit, len(tr.blocks) - 1)
    with torch.no_grad():
        top = tr.top(h, c, pts, pit, len(tr.blocks) - 1)
    assert torch.allclose(top[:, :tr.cfg.n_frames], tr.generate(pts, pit), atol=1e-5)
    # A resume keeps the grid and the frozen blocks (no --map-grid / --train-blocks given).
    assert T.run_train(train_args("transformer", data_dir, ft, "--resume", "--steps", "6")) == 0
    st = load_training_state(ft / "transformer.pt")
    assert st["train_blocks"] == 1 and st["step"] == 6
    for bad, match in ((["--train-blocks", "1"], "--init"),
                       (["--init", str(base_path), "--train-blocks", "9"], "has 2 blocks"),
                       (["--init", str(base_path), "--map-grid", "4,x"], "--map-grid"),
                       (["--init", str(base_path), "--map-grid", "1"], "2..1024"),
                       (["--init", str(base_path), "--train-blocks", "1", "--point-noise",
                         "0.01"], "noise-free")):
        with pytest.raises(ConfigError, match=match):
            T.run_train(train_args("transformer", data_dir, tmp_path / "bad", *bad))
    with pytest.raises(ConfigError, match="parallel decoder"):
        T.run_train(train_args("transformer", data_dir, tmp_path / "ar", "--vae",
                               str(out / "vae.pt"), "--steps", "2", "--map-grid", "4"))
    # A new parallel run with a grid: every block reads it.
    fresh = tmp_path / "fresh"
    assert T.run_train(train_args("transformer", data_dir, fresh, "--vae", str(out / "vae.pt"),
                                  "--steps", "2", "--decoder", "parallel", "--map-grid",
                                  "4")) == 0
    fresh_model = load_model(next(fresh.glob("pgesam_*.pt")))
    cfg = fresh_model.transformer.cfg
    assert cfg.map_grid == (4,) and cfg.map_grid_from_block == 0
    # --map-grid-from-block 0 on the grown model: every block reads its grid, the whole
    # decoder trains (the first block moves), and it still packs against its init.
    low = tmp_path / "low"
    model_path = next(ft.glob("pgesam_*.pt"))
    assert T.run_train(train_args("transformer", data_dir, low, "--init", str(model_path),
                                  "--map-grid-from-block", "0", "--steps", "2",
                                  "--lr", "1e-2")) == 0
    low_model = next(low.glob("pgesam_*.pt"))
    low_tr = load_model(low_model).transformer
    assert low_tr.cfg.map_grid_from_block == 0 and low_tr.cfg.map_grid == (4, 8)
    # (the same weights read from block 0 play differently: the first block reads the grid)
    same = ParallelFrameTransformer(dataclasses.replace(tr.cfg, map_grid_from_block=0)).eval()
    same.load_state_dict(tr.state_dict())
    assert not torch.allclose(same.generate(pts, pit), tr.generate(pts, pit), atol=1e-4)
    assert any(not torch.equal(v, tr.blocks[0].state_dict()[k])
               for k, v in low_tr.blocks[0].state_dict().items())
    from pgesam_live.model.checkpoints import pack_model
    packed = load_model(pack_model(low_model, model_path, ft))
    assert packed.transformer.cfg.map_grid_from_block == 0
    assert torch.allclose(packed.transformer.generate(pts, pit), low_tr.generate(pts, pit),
                          atol=1e-2)
    for bad, match in ((["--init", str(model_path), "--map-grid-from-block", "0",
                         "--train-blocks", "1"], "whole decoder"),
                       (["--init", str(model_path), "--map-grid-from-block", "7"], "blocks are"),
                       (["--init", str(base_path), "--map-grid-from-block", "0"], "no map grid")):
        with pytest.raises(ConfigError, match=match):
            T.run_train(train_args("transformer", data_dir, tmp_path / "bad2", *bad))
    assert "map_grid_filled_entries" not in fresh_model.meta.training  # noisy points: kept
    # scripts/fill_map_grid.py fills a --train-blocks model file written before `train` did:
    # the same entries, the same values as `train`'s own fill.
    fill = _script("fill_map_grid")
    old_tr = copy.deepcopy(tr)
    assert old_tr.map_grid is not None
    fs = load_frames(data_dir, "train", got.codec, pitch_range=tuple(got.meta.pitch_range),
                     n_frames=tr.cfg.n_frames, duration_s=4.0)
    mu, _ = T.encode_all(got.vae, fs.frames[:, :tr.cfg.n_frames].float())
    trained_at = torch.cat([mu, instrument_means(mu, fs.instrument.long())])
    unread = [~m for m in old_tr.map_grid.read_entries(trained_at)]
    with torch.no_grad():
        for t, u in zip(old_tr.map_grid.tables, unread, strict=True):
            t[u] = torch.randn(int(u.sum()), t.shape[1])  # as a run left it: random
    old_meta = dataclasses.replace(got.meta, training={
        k: v for k, v in got.meta.training.items() if k != "map_grid_filled_entries"})
    old_file = save_model(tmp_path / "old", got.vae, old_tr, old_meta)
    filled_dir = tmp_path / "filled"
    assert fill.main([str(old_file), "--data", str(data_dir), "--out", str(filled_dir)]) == 0
    filled = load_model(next(filled_dir.glob("pgesam_*.pt")))
    assert filled.meta.training["map_grid_filled_entries"] == \
        got.meta.training["map_grid_filled_entries"]
    assert filled.transformer.map_grid is not None and tr.map_grid is not None
    for a, b in zip(filled.transformer.map_grid.tables, tr.map_grid.tables, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for model, match in ((filled.path, "filled already"), (fresh_model.path, "noisy points"),
                         (base_path, "no map grid")):
        assert fill.main([str(model), "--data", str(data_dir), "--out",
                          str(tmp_path / "refused")]) == 2
        assert match in capsys.readouterr().err


def test_init_with_another_vae_moves_the_decoder_to_that_map(data_dir: Path,
                                                               tmp_path: Path) -> None:
    """`--init M --vae OTHER`: M's decoder is moved onto OTHER's map (its point MLP and grid
    refitted so each training note's new point gives the condition its old point gave): the
    blocks are M's, each instrument sounds at its new point as it did at its old one, the
    model file carries OTHER's VAE and map; `--steps 0` trains nothing else; misuse refused."""
    from pgesam_live.model.parallel import ParallelFrameTransformer

    out, other = tmp_path / "run", tmp_path / "other"
    T.run_train(train_args("vae", data_dir, out, "--steps", "2"))
    T.run_train(train_args("transformer", data_dir, out, "--steps", "2", "--decoder",
                           "parallel", "--map-grid", "4,8"))
    base_path = next(out.glob("pgesam_*.pt"))
    base = load_model(base_path)
    T.run_train(train_args("vae", data_dir, other, "--steps", "3", "--seed", "1"))
    moved_dir = tmp_path / "moved"
    assert T.run_train(train_args("transformer", data_dir, moved_dir, "--init", str(base_path),
                                  "--vae", str(other / "vae.pt"), "--steps", "0")) == 0
    moved = load_model(next(moved_dir.glob("pgesam_*.pt")))
    tr, tr0 = moved.transformer, base.transformer
    assert isinstance(tr, ParallelFrameTransformer) and isinstance(tr0, ParallelFrameTransformer)
    for a, b in zip(tr.blocks.parameters(), tr0.blocks.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(tr.point_mlp[0].weight, tr0.point_mlp[0].weight)
    new_state = load_training_state(other / "vae.pt")
    for k, v in moved.vae.state_dict().items():
        assert torch.equal(v, new_state["model"][k])
    assert moved.meta.training_points == new_state["training_points"]
    assert moved.meta.training["vae_steps"] == 3  # the new VAE's record, not the init's (2)
    report = moved.meta.training["map_moved"]
    assert report["points"] == 24 and report["grid_condition_error"] < 0.05
    # Each instrument at its new point plays what it played at its old point.
    fs = load_frames(data_dir, "train", base.codec, pitch_range=(48, 51),
                     n_frames=tr.cfg.n_frames, duration_s=4.0)
    frames, inst = fs.frames[:, :tr.cfg.n_frames].float(), fs.instrument.long()
    old_pts = instrument_means(T.encode_all(base.vae, frames)[0], inst)
    new_pts = instrument_means(T.encode_all(moved.vae, frames)[0], inst)
    assert float((new_pts - old_pts).abs().max()) > 0.01  # the map did change
    with torch.no_grad():
        then, now = tr0.generate(old_pts, fs.pitch.long()), tr.generate(new_pts, fs.pitch.long())
        elsewhere = tr0.generate(new_pts, fs.pitch.long())
    assert float((now - then).abs().mean()) < 0.25 * float((elsewhere - then).abs().mean())
    # It trains on from the moved decoder; a resume does not move it again.
    assert T.run_train(train_args("transformer", data_dir, tmp_path / "ft", "--init",
                                  str(base_path), "--vae", str(other / "vae.pt"),
                                  "--steps", "2")) == 0
    st = load_training_state(tmp_path / "ft" / "transformer.pt")
    assert st["map_moved"]["points"] == 24
    assert T.run_train(train_args("transformer", data_dir, tmp_path / "ft", "--resume",
                                  "--steps", "3")) == 0
    for bad, err, match in (
            (["--steps", "0"], ConfigError, "only with --init and --vae"),
            (["--init", str(base_path), "--vae", str(out / "transformer.pt")],
             CheckpointError, "not a VAE")):
        with pytest.raises(err, match=match):
            T.run_train(train_args("transformer", data_dir, tmp_path / "bad", *bad))
