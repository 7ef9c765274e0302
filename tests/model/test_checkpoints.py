"""Model files: save -> load round trip, content hash in the name, damaged files named."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pgesam_live.errors import CheckpointError
from pgesam_live.model import checkpoints as ck
from pgesam_live.model.codec import get_codec
from pgesam_live.model.train import build_models
from pgesam_live.model.vae import VAEConfig

PITCHES = (48, 60)


def _meta(codec_name: str = "harmonic") -> ck.ModelMeta:
    codec = get_codec(codec_name)
    pts = ck.make_training_points(torch.tensor([[0.1, -0.2], [0.5, 0.4]]), ["bass", "organ"],
                                  ["sf_001", "sf_019"])
    return ck.ModelMeta(config_name="tiny", codec_name=codec_name,
                        codec_config={"n_harmonics": 64, "n_noise_bands": 32},
                        normalisation=ck.codec_normalisation(codec), pitch_range=PITCHES,
                        instrument_names=["sf_001", "sf_019"],
                        family_names=["bass", "brass", "flute", "guitar", "keyboard", "mallet",
                                      "organ", "reed", "string", "synth_lead", "vocal"],
                        training_points=pts, training={"vae_steps": 3, "hardware": {"cpu": "x"}})


def _models(seed: int = 0):  # noqa: ANN202
    torch.manual_seed(seed)
    return build_models("tiny", get_codec("harmonic").dim, 2, PITCHES)


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, object, object]:
    vae, tr = _models()
    path = ck.save_model(tmp_path, vae, tr, _meta())
    return path, vae, tr


def test_name_carries_the_content_hash(saved: tuple) -> None:
    path = saved[0]
    m = re.fullmatch(r"pgesam_tiny_harmonic-([0-9a-f]{8})\.pt", path.name)
    assert m, path.name
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:8] == m.group(1)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_save_load_round_trip(saved: tuple) -> None:
    path, vae, tr = saved
    b = ck.load_model(path, "cpu")
    assert b.id == path.stem and b.model_id == path.stem
    assert b.vae.cfg == vae.cfg and b.transformer.cfg == tr.cfg
    for mine, theirs in ((vae, b.vae), (tr, b.transformer)):
        sd1, sd2 = mine.state_dict(), theirs.state_dict()
        assert sd1.keys() == sd2.keys()
        assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert not b.vae.training and not b.transformer.training
    meta = b.meta
    assert meta.pitch_range == PITCHES and b.pitch_range == PITCHES
    assert meta.codec_name == "harmonic" and b.codec.name == "harmonic"
    assert meta.instrument_names == ["sf_001", "sf_019"]
    assert [p["family"] for p in b.training_points] == ["bass", "organ"]
    assert b.training_points[0]["x"] == pytest.approx(0.1)
    assert meta.training["hardware"] == {"cpu": "x"}
    # Weights-only: the file holds nothing but tensors and plain types.
    obj = torch.load(path, weights_only=True)
    assert obj["format_version"] == ck.FORMAT_VERSION


def test_config_dicts_rebuild_the_dataclasses() -> None:
    cfg = VAEConfig.tiny(98, 5, n_pitches=13)
    d = ck.config_to_dict(cfg)
    assert isinstance(d["conv_channels"], list)  # plain types only
    assert ck.config_from_dict(VAEConfig, d) == cfg


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as ei:
        ck.load_model(path, "cpu")
    msg = str(ei.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    assert "\n" not in msg
    return msg


def test_truncated_file_is_named(saved: tuple, tmp_path: Path) -> None:
    data = saved[0].read_bytes()
    bad = tmp_path / "cut" / "pgesam_tiny_harmonic.pt"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    _expect_error(bad, "not a torch checkpoint")


def test_not_a_torch_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "pgesam_text.pt"
    bad.write_text("hello, I am not a model\n")
    _expect_error(bad, "not a torch checkpoint")


def test_a_pickled_module_is_refused_as_such_not_called_damaged(tmp_path: Path) -> None:
    pickled = tmp_path / "pgesam_module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    msg = _expect_error(pickled, "holds pickled Python objects", "not loaded, for safety")
    assert "damaged" not in msg and "\x1b" not in msg


def test_hash_mismatch_is_named(saved: tuple, tmp_path: Path) -> None:
    data = bytearray(saved[0].read_bytes())
    # Same name, one byte changed: the content no longer matches the name's hash.
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad" / saved[0].name
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    _expect_error(bad, "content hash", "does not match")
    # An intact file renamed to another hash is caught the same way.
    renamed = tmp_path / "bad" / "pgesam_tiny_harmonic-00000000.pt"
    renamed.write_bytes(saved[0].read_bytes())
    _expect_error(renamed, "00000000")
    # Damaged and renamed without a hash: the checksum the file carries inside catches it.
    mine = tmp_path / "bad" / "mine.pt"
    mine.write_bytes(bytes(data))
    _expect_error(mine, "damaged")
    intact = tmp_path / "bad" / "intact.pt"
    intact.write_bytes(saved[0].read_bytes())
    ck.read_model_payload(intact)  # an intact renamed copy loads


def _write_payload(tmp_path: Path, payload: dict) -> Path:
    """A model file with these contents, its inner checksum made to match (as a file from
    another version or tool would be): the checks after the checksum are tested."""
    payload = {**payload, ck.CONTENT_KEY: ck.content_digest(payload)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    p = tmp_path / f"pgesam_tiny_harmonic-{ck.short_hash(data)}.pt"
    p.write_bytes(data)
    return p


def test_missing_keys_and_wrong_version_are_named(saved: tuple, tmp_path: Path) -> None:
    obj = torch.load(saved[0], weights_only=True)
    no_vae = {k: v for k, v in obj.items() if k != "vae_state"}
    d1 = tmp_path / "a"
    d1.mkdir()
    _expect_error(_write_payload(d1, no_vae), "missing keys", "vae_state")
    d2 = tmp_path / "b"
    d2.mkdir()
    _expect_error(_write_payload(d2, {**obj, "format_version": 99}), "format version 99")
    d3 = tmp_path / "c"
    d3.mkdir()
    _expect_error(_write_payload(d3, {**obj, "format": "something-else"}), "not a")


def test_weights_that_do_not_fit_the_config_are_named(saved: tuple, tmp_path: Path) -> None:
    obj = torch.load(saved[0], weights_only=True)
    state = dict(obj["transformer_state"])
    state.pop(next(iter(state)))
    _expect_error(_write_payload(tmp_path, {**obj, "transformer_state": state}),
                  "Transformer weights")


def test_resolve_default_newest_name_and_path(saved: tuple, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as ei:
        ck.resolve_model("default", empty)
    assert "pgesam-live train all --data DIR" in str(ei.value) and str(empty) in str(ei.value)

    first = saved[0]
    vae, tr = _models(seed=1)
    second = ck.save_model(first.parent, vae, tr, _meta())
    assert second != first
    now = time.time()
    os.utime(first, (now - 100, now - 100))
    os.utime(second, (now, now))
    assert ck.resolve_model("default", first.parent) == second
    assert ck.resolve_model(first.stem, first.parent) == first
    assert ck.resolve_model(first.name, first.parent) == first
    assert ck.resolve_model(str(first), empty) == first
    with pytest.raises(CheckpointError, match="not found"):
        ck.resolve_model("pgesam_nothing", first.parent)


def test_default_dir_is_the_repository_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGESAM_CHECKPOINT_DIR", raising=False)
    import pgesam_live
    assert ck.checkpoints_dir() == Path(pgesam_live.__file__).resolve().parents[1] / "checkpoints"


def test_a_runs_folder_or_training_state_given_as_a_model_names_the_model_file(
        saved: tuple, tmp_path: Path) -> None:
    """`--model runs/x` or `--model runs/x/transformer.pt`: the message names the run's
    pgesam_*.pt, the file the performer meant."""
    model, _, _ = saved
    run = model.parent
    state = ck.save_training_state(run / "transformer.pt", {"step": 1})
    with pytest.raises(CheckpointError, match=f"a training state, not a model file; pass the "
                       f"run's model file, {re.escape(str(model))}"):
        ck.read_model_payload(state)
    with pytest.raises(CheckpointError, match=f"is a folder: pass the model file in it, e.g. "
                       f"--model {re.escape(str(model))}"):
        ck.resolve_model(str(run), directory=tmp_path / "none")
    bare = tmp_path / "bare"
    bare.mkdir()
    ck.save_training_state(bare / "vae.pt", {"step": 1})
    with pytest.raises(CheckpointError, match="resume the run with --resume"):
        ck.read_model_payload(bare / "vae.pt")
    with pytest.raises(CheckpointError, match="holds no model file"):
        ck.resolve_model(str(bare), directory=tmp_path / "none")


def test_training_state_round_trip_and_damage(tmp_path: Path) -> None:
    vae, _ = _models()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    vae(torch.randn(2, vae.cfg.n_frames, vae.cfg.frame_dim)).recon.pow(2).mean().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    p = ck.save_training_state(tmp_path / "vae.pt", {
        "step": 7, "optimizer": opt.state_dict(), "rng": gen.get_state(),
        "version": torch.__version__})
    st = ck.load_training_state(p, required=("step", "optimizer"))
    assert st["step"] == 7 and isinstance(st["version"], str)
    opt2 = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    opt2.load_state_dict(st["optimizer"])  # int parameter keys survived
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(CheckpointError, match="missing keys"):
        ck.load_training_state(p, required=("step", "model"))
    data = p.read_bytes()
    p.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match=re.escape(str(p))):
        ck.load_training_state(p)


def _fine_tune(tr: torch.nn.Module, seed: int = 5, size: float = 1e-3) -> torch.nn.Module:
    """A copy of `tr` with every weight nudged (what a short fine-tune does)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    ft = copy.deepcopy(tr)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(size * torch.randn(p.shape, generator=g))
    return ft


def test_packed_fine_tune_loads_close_to_the_full_one(saved: tuple, tmp_path: Path) -> None:
    base, vae, tr = saved
    ft = _fine_tune(tr)
    full = ck.save_model(tmp_path / "run", vae, ft, _meta())
    packed = ck.pack_model(full, base, base.parent)
    assert packed.parent == base.parent and packed != base
    assert re.fullmatch(r"pgesam_tiny_harmonic-[0-9a-f]{8}\.pt", packed.name)
    # The VAE is not stored again and the difference is 8-bit, compressed.
    assert packed.stat().st_size < 0.5 * full.stat().st_size
    b = ck.load_model(packed)
    assert b.id == packed.stem
    for k, v in vae.state_dict().items():
        assert torch.equal(b.vae.state_dict()[k], v), k
    for k, v in ft.state_dict().items():
        d = ck._blocks(v - tr.state_dict()[k])
        bound = d.abs().amax(1, keepdim=True) / ck.DELTA_LEVELS * 0.502 + 1e-7  # f16 scale
        err = ck._blocks(b.transformer.state_dict()[k] - v).abs()
        assert bool((err <= bound).all()), k
    pts, pitches = torch.tensor([[0.1, 0.2]]), torch.tensor([50])
    ref = ft.eval().generate(pts, pitches, n_frames=8)
    moved = float((tr.eval().generate(pts, pitches, n_frames=8) - ref).abs().max())
    err = float((b.transformer.generate(pts, pitches, n_frames=8) - ref).abs().max())
    assert err < 0.1 * moved  # the fine-tune's change survives packing, to within 10 %


def test_fine_tune_packs_against_a_float16_base(saved: tuple, tmp_path: Path) -> None:
    """The bundled default is stored as float16: a fine-tune of its float32 original packs
    against it (the VAE matches once rounded) and plays like the full fine-tune, closer than
    float16 itself would."""
    path, vae, tr = saved
    shipped = tmp_path / "ship"
    shipped.mkdir()
    half = ck.halve_model(path, shipped)
    ft = _fine_tune(tr)
    full = ck.save_model(tmp_path / "run", vae, ft, _meta())
    packed = ck.pack_model(full, half, shipped)
    assert packed.stat().st_size < 0.5 * full.stat().st_size
    b = ck.load_model(packed)
    base_state = ck.read_model_payload(half)[0]["transformer_state"]
    for k, v in ft.state_dict().items():
        got = b.transformer.state_dict()[k]
        assert got.dtype == torch.float32, k  # base + difference: not rounded to float16
        d = ck._blocks(v - base_state[k].float())  # the difference from the float16 base
        bound = d.abs().amax(1, keepdim=True) / ck.DELTA_LEVELS * 0.502 + 1e-7
        assert bool((ck._blocks(got - v).abs() <= bound).all()), k
    pts, pitches = torch.tensor([[0.1, 0.2]]), torch.tensor([50])
    ref = ft.eval().generate(pts, pitches, n_frames=8)
    moved = float((tr.eval().generate(pts, pitches, n_frames=8) - ref).abs().max())
    assert float((b.transformer.generate(pts, pitches, n_frames=8) - ref).abs().max()) \
        < 0.1 * moved
    # A different VAE is still refused, rounded or not.
    other_vae, other_tr = _models(seed=5)
    stranger = ck.save_model(tmp_path / "s", other_vae, other_tr, _meta())
    with pytest.raises(CheckpointError, match="VAE differs"):
        ck.pack_model(stranger, half, shipped)


def test_packed_file_needs_its_own_base(saved: tuple, tmp_path: Path) -> None:
    base, vae, tr = saved
    full = ck.save_model(tmp_path / "run", vae, _fine_tune(tr), _meta())
    packed = ck.pack_model(full, base, base.parent)
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = alone / packed.name
    moved.write_bytes(packed.read_bytes())
    with pytest.raises(CheckpointError, match=f"packed against {base.name}.*put that model"):
        ck.load_model(moved)
    # Another model file under the base's name: its content hash no longer matches the name.
    other_vae, other_tr = _models(seed=3)
    other = ck.save_model(tmp_path / "other", other_vae, other_tr, _meta())
    (alone / base.name).write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="does not match the name"):
        ck.load_model(moved)


def test_pack_refuses_what_is_not_a_fine_tune_of_the_base(saved: tuple, tmp_path: Path) -> None:
    base, _, _ = saved
    other_vae, other_tr = _models(seed=2)
    stranger = ck.save_model(tmp_path / "s", other_vae, other_tr, _meta())
    with pytest.raises(CheckpointError, match="VAE differs"):
        ck.pack_model(stranger, base, base.parent)
    meta = _meta()
    meta.pitch_range = (48, 59)
    shifted = ck.save_model(tmp_path / "p", other_vae, other_tr, meta)
    with pytest.raises(CheckpointError, match="pitch_range differs"):
        ck.pack_model(shifted, base, base.parent)
    # The command names a missing file before anything else, and refuses the base itself.
    ns = SimpleNamespace(model=str(tmp_path / "nosuch.pt"), base=str(base), out=str(tmp_path),
                         default=False)
    with pytest.raises(CheckpointError, match="MODEL .*nosuch.pt: no such model file"):
        ck.run_pack(ns)
    with pytest.raises(CheckpointError, match="the base itself"):
        ck.run_pack(SimpleNamespace(model=str(base), base=str(base), out=None, default=False))


def test_default_file_names_the_default_model(saved: tuple, tmp_path: Path) -> None:
    from pgesam_live.cli import main

    base, vae, tr = saved
    full = ck.save_model(tmp_path / "run", vae, _fine_tune(tr), _meta())
    newer = ck.save_model(base.parent, *_models(seed=4), _meta())
    now = time.time()
    os.utime(newer, (now + 100, now + 100))
    assert ck.resolve_model("default", base.parent) == newer
    assert main(["pack", str(full), "--base", str(base), "--default"]) == 0
    chosen = (base.parent / ck.DEFAULT_FILE).read_text().strip()
    assert chosen != newer.name and chosen != base.name
    assert ck.resolve_model("default", base.parent) == base.parent / chosen
    assert ck.load_model("default", directory=base.parent).id == Path(chosen).stem
    (base.parent / ck.DEFAULT_FILE).write_text("pgesam_gone-00000000.pt\n")
    with pytest.raises(CheckpointError, match="DEFAULT names 'pgesam_gone-00000000.pt'"):
        ck.resolve_model("default", base.parent)


def test_a_superseded_bundled_model_is_named_with_where_to_get_it(tmp_path: Path) -> None:
    """Journals and patches name older bundled models; asking for one says what it was and
    how to get it back from the repository's history, not just 'not found'."""
    from pgesam_live.model.checkpoints import SUPERSEDED, resolve_model

    for stem, (_what, commit) in SUPERSEDED.items():
        with pytest.raises(CheckpointError, match=f"git show {commit}:checkpoints/{stem}.pt"):
            resolve_model(stem, tmp_path)
    with pytest.raises(CheckpointError, match="its base pgesam_small_harmonic-be8bcbcb.pt"):
        resolve_model("pgesam_small_harmonic-869fda4e.pt", tmp_path)
    with pytest.raises(CheckpointError, match="its base pgesam_small_harmonic-ee2894f8.pt"):
        resolve_model("pgesam_small_harmonic-7dca1a90", tmp_path)
    (tmp_path / "pgesam_small_harmonic-ee2894f8.pt").write_bytes(b"")  # the base is there
    with pytest.raises(CheckpointError) as info:
        resolve_model("pgesam_small_harmonic-7dca1a90", tmp_path)
    assert "its base" not in str(info.value)


def test_float16_model_is_half_the_size_and_plays_the_same(saved: tuple, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    path, vae, tr = saved
    out = tmp_path / "half"
    assert ck.run_pack(SimpleNamespace(model=str(path), base=None, float16=True,
                                       out=str(out), default=True)) == 0
    (half,) = out.glob("pgesam_*.pt")
    assert (out / ck.DEFAULT_FILE).read_text().strip() == half.name
    assert "float16 model" in capsys.readouterr().out
    assert half.stat().st_size < 0.6 * path.stat().st_size
    obj, _ = ck.read_model_payload(half)
    assert obj["stored_as"] == {"dtype": "float16", "from": path.stem}
    stored = [v.dtype for v in obj["transformer_state"].values() if v.is_floating_point()]
    assert stored and all(d == torch.float16 for d in stored)
    b = ck.load_model(half)
    assert b.id == half.stem
    for k, v in tr.state_dict().items():  # loaded into float32, within float16's rounding
        got = b.transformer.state_dict()[k]
        assert got.dtype == v.dtype, k
        assert torch.allclose(got, v, rtol=1e-3, atol=1e-4), k
    pts, pitches = torch.tensor([[0.1, 0.2]]), torch.tensor([50])
    ref = tr.eval().generate(pts, pitches, n_frames=8)
    other = _fine_tune(tr, size=1e-2).eval().generate(pts, pitches, n_frames=8)
    err = float((b.transformer.generate(pts, pitches, n_frames=8) - ref).abs().max())
    assert err < 0.1 * float((other - ref).abs().max())


def test_float16_keeps_float32_where_float16_would_lose_the_value(tmp_path: Path) -> None:
    vae, tr = _models()
    with torch.no_grad():
        first = next(iter(tr.parameters()))
        first.view(-1)[0] = 1e5       # beyond float16's range
        params = list(tr.parameters())
        last = params[-1]
        last.fill_(1e-9)              # every value tiny: flushed to zero in float16
        big = max(params[1:-1], key=lambda p: p.numel())
        big.view(-1)[0] = 1e-9        # one stray tiny value among normal ones: it may go
    path = ck.save_model(tmp_path, vae, tr, _meta())
    (tmp_path / "h").mkdir()
    obj, _ = ck.read_model_payload(ck.halve_model(path, tmp_path / "h"))
    names = {id(p): n for n, p in tr.named_parameters()}
    assert obj["transformer_state"][names[id(first)]].dtype == torch.float32
    assert obj["transformer_state"][names[id(last)]].dtype == torch.float32
    # 1e-9 -> 0 is far below the rounding of the tensor's own values: halved
    assert obj["transformer_state"][names[id(big)]].dtype == torch.float16


def test_pack_rank_cuts_large_differences_to_low_rank_factors(saved: tuple,
                                                             tmp_path: Path) -> None:
    """`pack --rank R` (lossy): a fine-tune whose matrices moved by rank-2 changes (plus
    noise well below them) packs at rank 2 into fewer bytes than the lossless difference,
    loads back to within the 8-bit factors' rounding and plays like the full fine-tune."""
    import copy

    base, vae, tr = saved
    g = torch.Generator().manual_seed(3)
    ft = copy.deepcopy(tr)
    with torch.no_grad():
        for p in ft.parameters():
            if p.dim() == 2:
                m, n = p.shape
                p.add_(1e-2 * torch.randn(m, 2, generator=g) @ torch.randn(2, n, generator=g))
            p.add_(1e-4 * torch.randn(p.shape, generator=g))
    full = ck.save_model(tmp_path / "run", vae, ft, _meta())
    out = tmp_path / "ship"
    out.mkdir()
    shutil.copy(base, out / base.name)
    lossless = ck.pack_model(full, out / base.name, out)
    cut = ck.pack_model(full, out / base.name, out, max_rank=2)
    assert cut.stat().st_size < 0.7 * lossless.stat().st_size
    obj = ck.read_model_payload(cut)[0]
    assert obj["training"]["packed_rank"] == 2
    cut_keys = set(obj["transformer_delta"]["truncated"]["keys"])
    big = {k for k, v in tr.state_dict().items() if v.dim() == 2 and 8 * sum(v.shape)
           <= v.numel()}
    assert big and cut_keys == big
    b = ck.load_model(cut)
    for k, v in ft.state_dict().items():
        moved = float((v - tr.state_dict()[k]).abs().max())
        err = float((b.transformer.state_dict()[k] - v).abs().max())
        assert err <= 0.02 * moved + 1e-5, (k, err, moved)
    pts, pitches = torch.tensor([[0.1, 0.2]]), torch.tensor([50])
    ref = ft.eval().generate(pts, pitches, n_frames=8)
    moved = float((tr.eval().generate(pts, pitches, n_frames=8) - ref).abs().max())
    assert float((b.transformer.generate(pts, pitches, n_frames=8) - ref).abs().max()) \
        < 0.1 * moved
    for bad in (dict(base=None, rank=2), dict(base=str(base), rank=0)):
        with pytest.raises(CheckpointError, match="--rank"):
            ck.run_pack(SimpleNamespace(model=str(full), float16=False, out=None,
                                        default=False, **bad))


def test_pack_asks_for_base_or_float16(saved: tuple) -> None:
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="--base BASE .* or --float16"):
        ck.run_pack(SimpleNamespace(model=str(path), base=None, float16=False, out=None,
                                    default=False))
    with pytest.raises(CheckpointError, match="not both"):
        ck.run_pack(SimpleNamespace(model=str(path), base=str(path), float16=True, out=None,
                                    default=False))
