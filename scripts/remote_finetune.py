"""Fine-tune a model on a machine that lacks the audio data set (a lent GPU, say).

The training notes' frames travel as one compact file instead of 1.5 GB of audio, and
`pgesam-live train transformer --init MODEL ...` runs unchanged on them:

    # here, next to the data set (reads or fills its frame cache):
    python scripts/remote_finetune.py export --data DIR --model MODEL --out frames.xz
    # there, with this repository and frames.xz:
    python scripts/remote_finetune.py train --frames frames.xz --deadline-s 450 -- \\
        --init MODEL --out runs/ft --lora-rank 16 --batch-size 128 --lr 5e-4 --self-feed 0.5

The frames are stored as 8-bit codes per channel (range [lo, hi] of that channel; RMS
rounding error about 6e-4 on frames in 0..1, against a training MSE near 1e-3), channel-major,
differenced along time and LZMA-compressed: the 3,985 training notes at MIDI 48-72 take about
31 MB instead of 469 MB. `--deadline-s` times a few steps first and sets --steps so that
training ends within that many seconds of the start.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import lzma
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgesam_live.cli import build_parser  # noqa: E402
from pgesam_live.model import lora  # noqa: E402
from pgesam_live.model import train as T  # noqa: E402
from pgesam_live.model.checkpoints import read_model_payload  # noqa: E402


def export(data: Path, model: Path, out: Path) -> None:
    obj, _ = read_model_payload(model)
    ns = build_parser().parse_args(["train", "transformer", "--data", str(data),
                                    "--init", str(model), "--device", "cpu"])
    ns.progress = True
    opts = T.TrainOptions.from_namespace(ns)
    codec = T.get_codec(obj["codec"]["name"], **dict(obj["codec"].get("config") or {}))
    pr = (int(obj["pitch_range"][0]), int(obj["pitch_range"][1]))
    n_frames = int(obj["transformer_config"]["n_frames"])
    td = T.load_train_data(opts, codec, pr, n_frames, torch.device("cpu"), T.setup_dist("cpu"))
    f = td.frames.numpy()
    lo, hi = f.min(axis=(0, 1)), f.max(axis=(0, 1))
    q = np.round((f - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)
    q = np.ascontiguousarray(q.transpose(0, 2, 1))  # [N, D, T]
    d = np.diff(q.astype(np.int16), axis=2, prepend=0).astype(np.uint8)
    # Channel 0 (the harmonic codec's pitch) at 16 bits: 8 bits over its whole range would be
    # steps of ~20 cents, a bias the decoder would learn.
    p16 = np.round((f[..., 0] - lo[0]) / max(hi[0] - lo[0], 1e-12) * 65535).astype(np.uint16)
    meta = {"shape": list(f.shape), "lo": torch.from_numpy(lo), "hi": torch.from_numpy(hi),
            "channel0_u16": lzma.compress(np.ascontiguousarray(p16).tobytes()),
            "pitch": td.pitch, "family": td.family, "instrument": td.instrument,
            "instrument_names": td.instrument_names, "instrument_family": td.instrument_family}
    buf = io.BytesIO()
    torch.save(meta, buf)
    head = buf.getvalue()
    body = lzma.compress(d.tobytes(), preset=9 | lzma.PRESET_EXTREME)
    out.write_bytes(len(head).to_bytes(8, "little") + head + body)
    err = (q.transpose(0, 2, 1).astype(np.float32) / 255 * (hi - lo) + lo) - f
    err[..., 0] = p16.astype(np.float32) / 65535 * (hi[0] - lo[0]) + lo[0] - f[..., 0]
    print(f"{out}: {f.shape[0]} notes, {out.stat().st_size / 1e6:.1f} MB, "
          f"rounding RMS {float(np.sqrt((err ** 2).mean())):.2e}")


def load_portable(path: Path, device: torch.device) -> T.TrainData:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta: dict[str, Any] = torch.load(io.BytesIO(raw[8:8 + n]), weights_only=True)
    shape = meta["shape"]
    d = np.frombuffer(lzma.decompress(raw[8 + n:]), dtype=np.uint8)
    q = np.cumsum(d.reshape(shape[0], shape[2], shape[1]), axis=2, dtype=np.uint8)
    lo, hi = meta["lo"].numpy(), meta["hi"].numpy()
    frames = q.transpose(0, 2, 1).astype(np.float32) / 255 * (hi - lo) + lo
    if "channel0_u16" in meta:
        p16 = np.frombuffer(lzma.decompress(meta["channel0_u16"]), dtype=np.uint16)
        frames[..., 0] = p16.reshape(shape[0], shape[1]).astype(np.float32) / 65535 * (
            hi[0] - lo[0]) + lo[0]
    return T.TrainData(frames=torch.from_numpy(frames).to(device),
                       pitch=meta["pitch"].to(device), family=meta["family"].to(device),
                       instrument=meta["instrument"].to(device),
                       instrument_names=list(meta["instrument_names"]),
                       instrument_family=list(meta["instrument_family"]))


def _seconds_per_step(data: T.TrainData, opts: T.TrainOptions, dev: torch.device,
                      probe_steps: int = 12) -> float:
    """Time a few real training steps (a throwaway copy of the model the run builds)."""
    src = Path(str(opts.init or opts.vae))
    obj, _ = read_model_payload(src)
    codec = T.get_codec(obj["codec"]["name"], **dict(obj["codec"].get("config") or {}))
    if opts.init:
        tr = T.build_transformer(obj["transformer_config"], obj["transformer_state"], "init")
    else:
        pr = (int(obj["pitch_range"][0]), int(obj["pitch_range"][1]))
        _, cfg = T.make_configs(str(obj["config_name"]), codec.dim, 1, pr,
                                opts.decoder or T.DEFAULT_DECODER)
        tr = T.make_transformer(cfg)
    tr.to(dev).train()
    params = lora.attach(tr, opts.lora_rank) if opts.lora_rank else list(tr.parameters())
    opt = torch.optim.AdamW(params, lr=1e-6)
    batch = int(opts.batch_size or 32)
    w = T.channel_weights(obj["codec"]["name"], tr.cfg.frame_dim, dev)
    codec = codec.to(dev)
    t0 = 0.0
    for i in range(probe_steps + 2):
        if i == 2:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
        idx = torch.randint(0, len(data.pitch), (batch,), device=dev)
        pts = torch.rand(batch, 2, device=dev) - 0.5
        x = data.frames[idx]
        x_in = x
        if opts.self_feed:
            x_in = T._self_fed_inputs(tr, pts, data.pitch[idx], x, opts.self_feed,
                                      opts.self_feed_passes or 2)
        pred = tr(pts, data.pitch[idx], x_in)
        if tr.cfg.parallel:
            loss = T.audible_frame_loss(pred, x, codec, w, opts.loss_value("delta_weight", None))
            spectral = opts.loss_value("spectral_weight", None)
            if spectral:
                loss = loss + spectral * T.decoded_spectral_loss(pred, x, codec)
        else:
            loss = (((pred - x) ** 2) * w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.time() - t0) / probe_steps


def train(frames: Path, deadline_s: float, args: list[str]) -> int:
    start = time.time()
    torch.set_float32_matmul_precision("high")
    ns = build_parser().parse_args(["train", "transformer", "--data", str(frames), *args])
    ns.progress = False
    opts = T.TrainOptions.from_namespace(ns)
    dev = T.resolve_device(opts.device)
    data = load_portable(frames, dev)
    if opts.steps is None:
        sps = _seconds_per_step(data, opts, dev)
        left = deadline_s - (time.time() - start)
        ns.steps = max(1, int(left / sps * 0.97))
        print(f"{sps * 1000:.1f} ms/step, {left:.0f} s left: --steps {ns.steps}", flush=True)
    real = T.load_train_data
    T.load_train_data = lambda *a, **k: data  # type: ignore[assignment]
    try:
        return T.run_train(ns)
    finally:
        T.load_train_data = real  # type: ignore[assignment]


def slim(model: Path, out: Path) -> None:
    """A model file's Transformer (config, float16 weights, training record) alone: what comes
    back from a lent machine within its file-size limits; `unslim` rebuilds the model file
    with the VAE and meta of the base it was trained on."""
    obj, model_id = read_model_payload(model)
    state = _cast(obj["transformer_state"], torch.float16)
    torch.save({"transformer_config": obj["transformer_config"], "transformer_state": state,
                "training": obj["training"], "from": model_id}, out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


def unslim(slim_file: Path, base: Path, out_dir: Path) -> Path:
    """`slim`'s file + the base model file it was trained with -> a model file in out_dir."""
    from pgesam_live.model.checkpoints import (
        build_transformer,
        build_vae,
        meta_from_payload,
        save_model,
    )

    s = torch.load(slim_file, weights_only=True)
    obj, _ = read_model_payload(base)
    vae = build_vae(obj["vae_config"], obj["vae_state"], base)
    state = _cast(s["transformer_state"], torch.float32)
    tr = build_transformer(s["transformer_config"], state, slim_file)
    meta = dataclasses.replace(meta_from_payload(obj), training=dict(s["training"]))
    path = save_model(out_dir, vae, tr, meta)  # type: ignore[arg-type]
    print(path)
    return path


def half(model: Path, out: Path) -> None:
    """A whole model file with its float tensors in float16: the base of a fine-tune on a lent
    machine when the working tree that travels must stay small (`widen` undoes it there)."""
    obj, model_id = read_model_payload(model)
    torch.save(_cast(obj, torch.float16) | {"from": model_id}, out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


def widen(half_file: Path, out: Path) -> Path:
    """`half`'s file -> a model file (float32, its own checksum) that `--init` reads."""
    from pgesam_live.model.checkpoints import CONTENT_KEY, content_digest

    obj = _cast(torch.load(half_file, weights_only=True), torch.float32)
    obj.pop("from", None)
    obj[CONTENT_KEY] = content_digest(obj)
    torch.save(obj, out)
    read_model_payload(out)  # the file must read as a model before training starts
    print(out)
    return out


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    if isinstance(x, list):
        return [_cast(v, dtype) for v in x]
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--frames", type=Path, required=True)
    t.add_argument("--deadline-s", type=float, default=0.0,
                   help="without --steps: end training this many seconds after the start")
    t.add_argument("rest", nargs=argparse.REMAINDER, help="-- then `train` options")
    sl = sub.add_parser("slim", help="a model file's Transformer alone, float16")
    sl.add_argument("model", type=Path)
    sl.add_argument("--out", type=Path, required=True)
    us = sub.add_parser("unslim", help="slim file + its base model file -> a model file")
    us.add_argument("slim", type=Path)
    us.add_argument("--base", type=Path, required=True)
    us.add_argument("--out", type=Path, required=True, help="folder for the model file")
    hf = sub.add_parser("half", help="a whole model file, float16 (to travel)")
    hf.add_argument("model", type=Path)
    hf.add_argument("--out", type=Path, required=True)
    wd = sub.add_parser("widen", help="half's file -> a float32 model file")
    wd.add_argument("half", type=Path)
    wd.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args()
    if ns.cmd == "half":
        half(ns.model, ns.out)
        return 0
    if ns.cmd == "widen":
        widen(ns.half, ns.out)
        return 0
    if ns.cmd == "slim":
        slim(ns.model, ns.out)
        return 0
    if ns.cmd == "unslim":
        unslim(ns.slim, ns.base, ns.out)
        return 0
    if ns.cmd == "export":
        export(ns.data, ns.model, ns.out)
        return 0
    rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    return train(ns.frames, ns.deadline_s, rest)


if __name__ == "__main__":
    sys.exit(main())
