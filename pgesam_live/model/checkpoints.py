"""Model files: verified, self-describing checkpoints with a short content hash in the name.

A model file (`pgesam_<config>_<codec>-<hash8>.pt`) is one `torch.save` payload made only of
tensors and plain Python types, so it loads with `weights_only=True`. It carries everything
needed to rebuild and use the model without the data set: both network configs (as dicts that
rebuild the dataclasses), the codec name and config, the normalisation, the pitch range, the
instrument and family names, the training points (each training instrument's mean latent point
and family, for the map) and training metadata. `<hash8>` is the first 8 hex digits of the
sha256 of the file's bytes, as in EnCodec's `encodec_24khz-d7cc33bc.th`, and is checked on load.

A *packed* model file (`pack_model`, `pgesam-live pack`) stores a fine-tune of another model
file, its base, compactly: the same VAE (stored once, in the base) and the Transformer as an
8-bit, zlib-compressed difference from the base's weights with one scale per 64 weights
(free-running generation amplifies weight errors; at this precision the packed model's notes
differ from the full one's about as much as rounding the weights to float16 makes them),
except that a difference of low rank (a `train --lora-rank` fine-tune's) is stored as float16
factors. `pack --rank R` (lossy) also cuts each large matrix's difference to its best rank-R
approximation, stored as 8-bit factors: a 1,000-step whole-decoder fine-tune of the default
packs in ~2 MB instead of ~8, which keeps new releases inside the clone's size budget. It
loads like any model file, from the base in the same folder (whose hash is
checked); the base may itself be packed, or stored as float16 (its VAE is then the
fine-tune's rounded to float16, and the rebuilt Transformer is float32). `pack MODEL
--float16` instead stores a model's weights as float16 (half the bytes, self-contained;
loaded into float32 modules).

`checkpoints/DEFAULT`, when present, names the file `--model default` loads; otherwise the
newest `pgesam_*.pt` there.

Training-state files (`vae.pt`, `transformer.pt` in a run directory) use the same atomic
writer and damage checks but no hash in the name: they change at every checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import pgesam_live
from pgesam_live.errors import CheckpointError, CodecError, ConfigError
from pgesam_live.model.configs import _plain, config_from_dict, config_to_dict
from pgesam_live.model.memory import SpectralMemory

if TYPE_CHECKING:
    from pgesam_live.model.codec import Codec
    from pgesam_live.model.parallel import Decoder
    from pgesam_live.model.vae import TimbreVAE

FORMAT = "pgesam-live/model"
STATE_FORMAT = "pgesam-live/train-state"
FORMAT_VERSION = 1

MODEL_KEYS = (
    "format", "format_version", "config_name", "vae_config", "vae_state",
    "transformer_config", "transformer_state", "codec", "normalisation", "pitch_range",
    "instrument_names", "family_names", "training_points", "training",
)
_HASHED_NAME = re.compile(r"^(?P<stem>.+)-(?P<hash>[0-9a-f]{8})\.pt$")
TRAIN_HINT = "pgesam-live train all --data DIR"
DEFAULT_FILE = "DEFAULT"   # in the checkpoints folder: the name of the default model file
DELTA_LEVELS = 127         # packed differences: integers in -127..127 (8 bits) ...
DELTA_BLOCK = 64           # ... times one scale per block of 64 consecutive weights
LOW_RANK_TOL = 1e-3        # a difference within this relative error of rank r packs as factors


def checkpoints_dir() -> Path:
    """The repository's `checkpoints/` folder, where the bundled model lives.

    `PGESAM_CHECKPOINT_DIR` overrides it (tests, installs without the repository).
    """
    env = os.environ.get("PGESAM_CHECKPOINT_DIR")
    if env:
        return Path(env)
    return Path(pgesam_live.__file__).resolve().parents[1] / "checkpoints"


TRAINING_POINT_KEYS = ("name", "x", "y", "family")


def make_training_points(xy: torch.Tensor, family: Sequence[str],
                         names: Sequence[str]) -> list[dict[str, Any]]:
    """Training points as plain dicts {name, x, y, family} (family: an NSynth family name).

    xy [M, 2] (each training instrument's mean latent point), family and names: M strings.
    """
    xy = xy.detach().float().cpu()
    return [{"name": str(n), "x": float(xy[i, 0]), "y": float(xy[i, 1]), "family": str(f)}
            for i, (n, f) in enumerate(zip(names, family, strict=True))]


@dataclass
class ModelMeta:
    """Everything about a model that is not weights."""

    config_name: str
    codec_name: str
    codec_config: dict[str, Any]
    normalisation: dict[str, Any]
    pitch_range: tuple[int, int]
    instrument_names: list[str]
    family_names: list[str]
    # Each training instrument's mean latent point: [{name, x, y, family}], for the map.
    training_points: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelBundle:
    """A loaded model: both networks in eval mode on one device, the codec, meta and id."""

    vae: TimbreVAE
    transformer: Decoder
    codec: Codec
    meta: ModelMeta
    id: str
    path: Path | None
    # the training instruments' spectra, read at render time (model/memory.py); None: none
    memory: SpectralMemory | None = None

    @property
    def model_id(self) -> str:
        return self.id

    @property
    def pitch_range(self) -> tuple[int, int]:
        return self.meta.pitch_range

    @property
    def training_points(self) -> list[dict[str, Any]]:
        return self.meta.training_points


# --- config dataclasses <-> plain dicts -------------------------------------------------------

def codec_normalisation(codec: Codec) -> dict[str, float]:
    """The codec's fixed normalisation constants (class attributes named *OFFSET* / *SCALE*):
    stored so that a model is never paired with a codec whose frames mean something else."""
    out: dict[str, float] = {}
    for k in dir(type(codec)):
        v = getattr(type(codec), k, None)
        if k.isupper() and ("OFFSET" in k or "SCALE" in k) and isinstance(v, (int, float)):
            out[k] = float(v)
    return out


# --- atomic, verified files --------------------------------------------------------------------

def payload_bytes(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_payload(path: Path, data: bytes, fmt: str) -> dict[str, Any]:
    """Unpickle (weights_only) and check the format tag and version."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(f"{path}: not a torch checkpoint (truncated or another file "
                              f"type); re-download it or retrain with `{TRAIN_HINT}`")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged archives
        if "Weights only load failed" in str(e):  # a whole pickled object, not weights
            raise CheckpointError(f"{path}: holds pickled Python objects (a module or class), "
                                  "not a pgesam-live file of tensors; it is not loaded, for "
                                  "safety: pass a pgesam_*.pt written by `pgesam-live train` "
                                  "or `pack`") from e
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # no terminal colour codes
        first = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(f"{path}: damaged checkpoint ({first[:160]}); replace the file "
                              f"or retrain with `{TRAIN_HINT}`") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        if got == STATE_FORMAT and fmt == FORMAT:  # a run's vae.pt / transformer.pt
            models = sorted(path.parent.glob("pgesam_*.pt"))
            hint = (f"pass the run's model file, {models[-1]}" if models else
                    "a run writes its model file (pgesam_*.pt) beside it when it finishes; "
                    "resume the run with --resume, or pass a pgesam_*.pt")
            raise CheckpointError(f"{path}: a training state, not a model file; {hint}")
        raise CheckpointError(f"{path}: not a {fmt} file (format {got!r}); "
                              f"pass a file written by pgesam-live")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {obj.get('format_version')!r}, this "
                              f"pgesam-live reads version {FORMAT_VERSION}; retrain or upgrade")
    return obj


def save_training_state(path: Path, payload: dict[str, Any]) -> Path:
    """Atomically write a training state (model, optimiser, step, RNG) to `path`."""
    payload = _plain({"format": STATE_FORMAT, "format_version": FORMAT_VERSION, **payload})
    atomic_write_bytes(Path(path), payload_bytes(payload))
    return Path(path)


def load_training_state(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a training state; damage or missing keys raise CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such training state; train this stage first")
    obj = _read_payload(path, path.read_bytes(), STATE_FORMAT)
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: missing keys {', '.join(missing)}; the file is from "
                              f"another version or damaged, retrain this stage")
    return obj


# --- model files --------------------------------------------------------------------------------

def save_model(directory: Path | str, vae: TimbreVAE, transformer: Decoder,
               meta: ModelMeta) -> Path:
    """Write a model file into `directory`; returns its path (`pgesam_<cfg>_<codec>-<h8>.pt`)."""
    lo, hi = (int(p) for p in meta.pitch_range)
    payload = _plain({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config_name": meta.config_name,
        "vae_config": config_to_dict(vae.cfg),
        "vae_state": _plain(vae.state_dict()),
        "transformer_config": config_to_dict(transformer.cfg),
        "transformer_state": _plain(transformer.state_dict()),
        "codec": {"name": meta.codec_name, "config": _plain(meta.codec_config)},
        "normalisation": _plain(meta.normalisation),
        "pitch_range": [lo, hi],
        "instrument_names": list(meta.instrument_names),
        "family_names": list(meta.family_names),
        "training_points": [_plain(dict(p)) for p in meta.training_points],
        "training": _plain(meta.training),
    })
    return _write_model_payload(directory, payload)


CONTENT_KEY = "content_sha256"  # inside the file: its own check, whatever it is renamed to


def content_digest(obj: Any) -> str:
    """SHA-256 over a payload's contents (every tensor's dtype, shape and bytes, every other
    value as JSON, keys in sorted order), leaving out CONTENT_KEY itself."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                if k != CONTENT_KEY:
                    h.update(json.dumps(str(k)).encode())
                    walk(x[k])
            h.update(b"}")
        elif isinstance(x, list | tuple):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(json.dumps(x, sort_keys=True, default=str).encode())

    walk(obj)
    return h.hexdigest()


def _write_model_payload(directory: Path | str, payload: dict[str, Any]) -> Path:
    payload = {**payload, CONTENT_KEY: content_digest(payload)}
    data = payload_bytes(payload)
    safe_cfg = re.sub(r"[^A-Za-z0-9]+", "", str(payload["config_name"])) or "model"
    codec_name = str(payload["codec"]["name"])
    path = Path(directory) / f"pgesam_{safe_cfg}_{codec_name}-{short_hash(data)}.pt"
    atomic_write_bytes(path, data)
    return path


# --- packed fine-tunes ---------------------------------------------------------------------------

def _blocks(t: torch.Tensor) -> torch.Tensor:
    """Any tensor -> float64 [n_blocks, DELTA_BLOCK], flattened and zero-padded."""
    flat = t.detach().cpu().double().reshape(-1)
    pad = (-flat.numel()) % DELTA_BLOCK
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, DELTA_BLOCK)


def _q8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t -> (int8 codes [t.numel()], float16 scales [n_blocks]): per block of DELTA_BLOCK
    values, round(t / scale) in -L..L with scale = max|block| / L."""
    d = _blocks(t)
    scale = (d.abs().amax(1, keepdim=True) / DELTA_LEVELS).half()  # stored as float16
    s64 = scale.double()
    q = (torch.round(d / s64.clamp(min=1e-300)) * (s64 > 0)).clamp(-DELTA_LEVELS, DELTA_LEVELS)
    return q.reshape(-1)[:t.numel()].to(torch.int8), scale.reshape(-1)


def _dq8(q: torch.Tensor, scale: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The inverse of _q8: float64 values of `shape`."""
    n = math.prod(shape)
    return (_blocks(q) * scale.double().reshape(-1, 1)).reshape(-1)[:n].view(*shape)


def _low_rank(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Factors (A [m, r], B [r, n], float64) of a 2-D difference d that is low-rank within
    LOW_RANK_TOL of its norm (as a LoRA fine-tune's is) and then takes fewer bytes as float16
    factors than as 8-bit values; else None."""
    if d.dim() != 2 or min(d.shape) < 2:
        return None
    m, n = d.shape
    u, sv, vh = torch.linalg.svd(d, full_matrices=False)
    total = float(sv.square().sum())
    if total == 0.0:
        return None
    tail = (sv.square().flip(0).cumsum(0).flip(0) / total).sqrt()  # residual of rank i: tail[i]
    fits = (tail <= LOW_RANK_TOL).nonzero()
    r = int(fits[0]) if len(fits) else min(m, n)
    if r == 0 or 2 * r * (m + n) >= m * n:
        return None
    root = sv[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r]


def _truncated(d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The best rank-`rank` factors (A^T [r, m], B [r, n], float64, balanced) of a 2-D
    difference d, when they take at most half the values d does; else None."""
    if d.dim() != 2 or rank * sum(d.shape) * 2 > d.numel():
        return None
    u, sv, vh = torch.linalg.svd(d, full_matrices=False)
    root = sv[:rank].sqrt()
    return (u[:, :rank] * root).t(), root[:, None] * vh[:rank]


def _pack_delta(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor],
                max_rank: int | None = None) -> dict[str, Any]:
    """state - base. Each weight whose difference is low-rank (`lowrank`) as float16 factors
    A [m, r] and B [r, n], all in one tensor (per weight A transposed, then B): a LoRA
    fine-tune moves weights by up to ~40 %, and free-running generation amplifies 8-bit
    factors' 1 % error to a 2e-3 frame MSE, float16's to 2e-8. With `max_rank` (lossy), each
    large matrix's difference is cut to its best rank-`max_rank` approximation, stored as
    8-bit factors (`truncated`: per weight A^T then B, coded as _q8 codes): a whole-decoder
    fine-tune's difference keeps 76-100 % of its energy at rank 32 in a quarter of the
    bytes. Every other difference (`keys`, in order) as 8-bit codes (see _q8),
    zlib-compressed into one uint8 tensor."""
    scales: dict[str, torch.Tensor] = {}
    chunks: list[bytes] = []
    keys: list[str] = []
    low_keys: list[str] = []
    ranks: list[int] = []
    factors: list[torch.Tensor] = []
    cut: dict[str, Any] = {"keys": [], "ranks": [], "scales": {}}
    cut_chunks: list[bytes] = []
    for key, w in state.items():
        diff = w.detach().cpu().double() - base[key].detach().cpu().double()
        ab = _low_rank(diff)
        if ab is None and max_rank is not None:
            t = _truncated(diff, max_rank)
            if t is not None:
                cut["keys"].append(key)
                cut["ranks"].append(max_rank)
                q, cut["scales"][key] = _q8(torch.cat([t[0].reshape(-1), t[1].reshape(-1)]))
                cut_chunks.append(q.numpy().tobytes())
                continue
        if ab is not None:
            low_keys.append(key)
            ranks.append(int(ab[1].shape[0]))
            factors += [ab[0].t().reshape(-1).half(), ab[1].reshape(-1).half()]
            continue
        keys.append(key)
        q, scales[key] = _q8(diff)
        chunks.append(q.numpy().tobytes())
    packed = zlib.compress(b"".join(chunks), 9)
    out = {"levels": DELTA_LEVELS, "block": DELTA_BLOCK, "keys": keys,
           "scales": scales, "data": torch.frombuffer(bytearray(packed), dtype=torch.uint8),
           "lowrank": {"keys": low_keys, "ranks": ranks,
                       "factors": torch.cat(factors) if factors
                       else torch.zeros(0, dtype=torch.float16)}}
    if cut["keys"]:
        cut["data"] = torch.frombuffer(bytearray(zlib.compress(b"".join(cut_chunks), 9)),
                                       dtype=torch.uint8)
        out["truncated"] = cut
    return out


def _unpacked_dtype(base: torch.Tensor) -> torch.dtype:
    """A fine-tune's weights rebuilt on a float16 base stay float32: the difference was taken
    from the base's float16 values exactly, so base + difference is finer than float16."""
    return torch.float32 if base.dtype == torch.float16 else base.dtype


def _plus_factors(b: torch.Tensor, factors: torch.Tensor, r: int) -> torch.Tensor:
    """base [m, n] + A @ B from `factors` (float64, A^T [r, m] then B [r, n], flattened)."""
    m, n = b.shape
    a_t, f_b = factors[:r * m].view(r, m), factors[r * m:].view(r, n)
    return (b.double() + a_t.t() @ f_b).to(_unpacked_dtype(b))


def _unpack_delta(delta: dict[str, Any], base: dict[str, torch.Tensor],
                  path: Path) -> dict[str, torch.Tensor]:
    """base + the packed difference -> a full state dict of the base's dtypes."""
    try:
        if int(delta["block"]) != DELTA_BLOCK:
            raise ValueError(f"block {delta['block']}, this version reads {DELTA_BLOCK}")
        raw = zlib.decompress(delta["data"].numpy().tobytes())
        q_all = torch.frombuffer(bytearray(raw), dtype=torch.int8)
        out: dict[str, torch.Tensor] = {}
        at = 0
        for key in delta["keys"]:
            b = base[key]
            d = _dq8(q_all[at:at + b.numel()], delta["scales"][key], b.shape)
            at += b.numel()
            out[key] = (b.double() + d).to(_unpacked_dtype(b))
        if at != q_all.numel():
            raise ValueError(f"{q_all.numel() - at} values left over")
        low = delta.get("lowrank") or {"keys": [], "ranks": []}
        f_at = 0
        for key, r in zip(low["keys"], low["ranks"], strict=True):
            b, r = base[key], int(r)
            m, n = b.shape
            out[key] = _plus_factors(b, low["factors"][f_at:f_at + r * (m + n)].double(), r)
            f_at += r * (m + n)
        if low["keys"] and f_at != low["factors"].numel():
            raise ValueError(f"{low['factors'].numel() - f_at} factor values left over")
        cut = delta.get("truncated")
        if cut is not None:
            q_cut = torch.frombuffer(bytearray(zlib.decompress(cut["data"].numpy().tobytes())),
                                     dtype=torch.int8)
            at = 0
            for key, r in zip(cut["keys"], cut["ranks"], strict=True):
                b, r = base[key], int(r)
                m, n = b.shape
                out[key] = _plus_factors(b, _dq8(q_cut[at:at + r * (m + n)],
                                                 cut["scales"][key], (r * (m + n),)), r)
                at += r * (m + n)
            if at != q_cut.numel():
                raise ValueError(f"{q_cut.numel() - at} truncated factor values left over")
        missing = [k for k in base if k not in out]
        if missing:
            raise ValueError(f"no difference stored for {', '.join(missing[:3])}")
    except (KeyError, ValueError, RuntimeError, zlib.error) as e:
        raise CheckpointError(f"{path}: its packed Transformer does not fit its base ({e}); "
                              "the file is damaged or was packed against another base: "
                              "replace it") from e
    return out


# Transformer config keys a fine-tune may change and still pack against its base: they
# change what reads the weights, not their shapes (the packed file keeps its own config).
PACK_CONFIG_FREE = ("map_grid_from_block",)


def pack_model(model: Path | str, base: Path | str, directory: Path | str,
               max_rank: int | None = None) -> Path:
    """Write `model`, a fine-tune of `base` (same configs, codec and VAE weights), as a packed
    model file into `directory`; `base` must sit next to it when it is loaded. `max_rank`:
    large matrices' differences cut to that rank (lossy: measure the packed file)."""
    model, base = Path(model), Path(base)
    obj, _ = read_model_payload(model)
    ref, base_id = read_model_payload(base)
    for key in ("config_name", "vae_config", "transformer_config", "codec", "normalisation",
                "pitch_range"):
        if key == "transformer_config":  # the same weights read from another block: packs
            mine, theirs = dict(obj[key]), dict(ref[key])
            for same_weights in PACK_CONFIG_FREE:
                mine.pop(same_weights, None)
                theirs.pop(same_weights, None)
            if mine == theirs:
                continue
        if obj[key] != ref[key]:
            raise CheckpointError(f"{model}: its {key} differs from {base}'s; only a fine-tune "
                                  "of the base (same configs and codec) can be packed")
    # A float16 base (`pack --float16`) holds the fine-tune's VAE rounded to float16.
    same_vae = obj["vae_state"].keys() == ref["vae_state"].keys() and all(
        torch.equal(v.to(ref["vae_state"][k].dtype), ref["vae_state"][k])
        for k, v in obj["vae_state"].items())
    if not same_vae:
        raise CheckpointError(f"{model}: its VAE differs from {base}'s; only a Transformer "
                              "fine-tuned on the base's VAE can be packed")
    payload = {k: v for k, v in obj.items() if k not in ("vae_state", "transformer_state")}
    payload.update({"vae_state": None, "transformer_state": None,
                    "base": {"file": base.name, "id": base_id},
                    "transformer_delta": _pack_delta(obj["transformer_state"],
                                                     ref["transformer_state"], max_rank)})
    if max_rank is not None:
        payload["training"] = {**payload.get("training", {}), "packed_rank": int(max_rank)}
    return _write_model_payload(directory, payload)


FLOAT16_MAX = 65504.0
FLOAT16_EPS = 2.0 ** -11  # float16's relative rounding (half an ulp at 1)


def halve_model(model: Path | str, directory: Path | str) -> Path:
    """Write `model` (a self-contained model file) with its float32 weights stored as float16
    into `directory` (half the bytes; they load back into float32 modules). A tensor with a
    value beyond float16's range, or one whose values rounding would flush from nonzero to
    zero by more than float16's own rounding of its largest value (a tensor of tiny values;
    not one stray 3e-8 in a matrix of 0.1s), stays float32."""
    model = Path(model)
    obj, _ = read_model_payload(model)
    if obj.get("vae_state") is None or obj.get("transformer_state") is None:
        raise CheckpointError(f"{model} is packed against a base: halve a self-contained "
                              "model file")

    def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state.items():
            if v.dtype == torch.float32 and v.numel():
                h = v.half()
                flushed = (h == 0) & (v != 0)
                absmax = float(v.abs().max())
                fits = absmax <= FLOAT16_MAX and (not bool(flushed.any()) or float(
                    v[flushed].abs().max()) <= FLOAT16_EPS * absmax)
                out[k] = h if fits else v
            else:
                out[k] = v
        return out

    payload = {**obj, "vae_state": half(obj["vae_state"]),
               "transformer_state": half(obj["transformer_state"]),
               "stored_as": {"dtype": "float16", "from": model.stem}}
    return _write_model_payload(directory, payload)


def run_pack(ns: Any) -> int:
    """`pgesam-live pack MODEL --base BASE [--rank R] [--out DIR] [--default]`, or
    `pgesam-live pack MODEL --float16 [--out DIR] [--default]`."""
    if not Path(ns.model).is_file():
        raise CheckpointError(f"MODEL {ns.model}: no such model file")
    rank = getattr(ns, "rank", None)
    if rank is not None and (not ns.base or not 1 <= rank <= 1024):
        raise CheckpointError(f"--rank {rank}: give a rank of 1..1024, with --base (it cuts "
                              "the difference from the base)")
    if getattr(ns, "float16", False):
        if ns.base:
            raise CheckpointError("pack: give --base (a difference from a base) or --float16 "
                                  "(the weights as float16), not both")
        out_dir = Path(ns.out) if ns.out else Path(ns.model).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        path = halve_model(ns.model, out_dir)
        print(f"float16 model: {path} ({path.stat().st_size / 1e6:.2f} MB, from "
              f"{Path(ns.model).stat().st_size / 1e6:.2f} MB)")
        if ns.default:
            atomic_write_bytes(out_dir / DEFAULT_FILE, (path.name + "\n").encode())
            print(f"default model of {out_dir}: {path.name}")
        return 0
    if not ns.base:
        raise CheckpointError("pack: give --base BASE (the model it was fine-tuned from) or "
                              "--float16")
    base = Path(ns.base)
    if not base.is_file():
        raise CheckpointError(f"--base {base}: no such model file")
    if Path(ns.model).resolve() == base.resolve() or \
            read_model_payload(Path(ns.model))[1] == read_model_payload(base)[1]:
        raise CheckpointError(f"{ns.model} is the base itself: pack the fine-tuned model "
                              "against the one it was fine-tuned from")
    out_dir = Path(ns.out) if ns.out else base.parent
    if out_dir.resolve() != base.parent.resolve() and not (out_dir / base.name).is_file():
        raise CheckpointError(f"{out_dir} does not hold the base {base.name}: the packed file "
                              "loads only next to it; copy the base there first")
    path = pack_model(ns.model, base, out_dir, max_rank=rank)
    size_mb = path.stat().st_size / 1e6
    print(f"packed model: {path} ({size_mb:.2f} MB; loads with {base.name} next to it)")
    if rank is not None:
        print(f"--rank {rank} is lossy: measure {path.name} (`pgesam-live eval --model "
              f"{path}`) against {Path(ns.model).name} before shipping it")
    if ns.default:
        atomic_write_bytes(out_dir / DEFAULT_FILE, (path.name + "\n").encode())
        print(f"default model of {out_dir}: {path.name}")
    return 0


def _unpack(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    """A packed payload with its base's VAE and the rebuilt Transformer filled in."""
    info = obj["base"]
    if not isinstance(info, dict) or "file" not in info or "id" not in info:
        raise CheckpointError(f"{path}: damaged base record; replace the file")
    base_path = path.parent / str(info["file"])
    if not base_path.is_file():
        raise CheckpointError(f"{path} is packed against {info['file']}, which is not next to "
                              f"it in {path.parent}: put that model file there (it ships in "
                              "checkpoints/ with this one)")
    ref, ref_id = read_model_payload(base_path)
    if ref_id != info["id"]:
        raise CheckpointError(f"{path} is packed against {info['id']}, but {base_path.name} is "
                              f"{ref_id}: restore the original base file")
    out = dict(obj)
    out["vae_state"] = ref["vae_state"]
    out["transformer_state"] = _unpack_delta(obj.get("transformer_delta") or {},
                                             ref["transformer_state"], path)
    return out


# Model files that were bundled once and are no longer in checkpoints/: what they were, and a
# commit whose tree still holds them (journals and patches may name them).
SUPERSEDED: dict[str, tuple[str, str]] = {
    "pgesam_small_harmonic-be8bcbcb": ("the first bundled model (autoregressive decoder)",
                                       "5bdc272"),
    "pgesam_small_harmonic-869fda4e": ("the bundled default before the parallel decoder "
                                       "(autoregressive, packed on be8bcbcb)", "5bdc272"),
    "pgesam_small_harmonic-a0523680": ("the bundled default before the map grid (parallel "
                                       "decoder)", "2ad58dd"),
    "pgesam_small_harmonic-0e9dab5e": ("the bundled default before its decoder moved onto a "
                                       "map that reads the whole note (parallel decoder, map "
                                       "grid)", "8f8661f"),
    "pgesam_small_harmonic-75bff41e": ("the same weights as 2a07b441 (the default that replaced "
                                       "it) with its VAE's training record uncorrected",
                                       "5d05c3e"),
    "pgesam_small_harmonic-2a07b441": ("the bundled default before its decoder moved onto a "
                                       "map whose VAE was chosen on the validation split "
                                       "(parallel decoder, map grid)", "1917800"),
    "pgesam_small_harmonic-82093872": ("the bundled default before its whole decoder was "
                                       "trained with a loss on the release (parallel decoder, "
                                       "map grid; the same map)", "f4fb38a"),
    "pgesam_small_harmonic-7dca1a90": ("the bundled default before its spectral memory (the "
                                       "same decoder, packed on ee2894f8, without the memory)",
                                       "953dee5"),
    "pgesam_small_harmonic-de12cb2d": ("the bundled default before its spectral memory kept "
                                       "how the notes move (the same decoder, packed on "
                                       "ee2894f8, with a note-long memory)", "1408693"),
}
# The packed ones among them: the base each loads with (next to it in checkpoints/).
SUPERSEDED_BASES: dict[str, str] = {
    "pgesam_small_harmonic-869fda4e": "pgesam_small_harmonic-be8bcbcb",
    "pgesam_small_harmonic-7dca1a90": "pgesam_small_harmonic-ee2894f8",
    "pgesam_small_harmonic-de12cb2d": "pgesam_small_harmonic-ee2894f8",
}


def resolve_model(name_or_path: str | Path = "default", directory: Path | None = None) -> Path:
    """`default` -> the file checkpoints/DEFAULT names, else the newest `pgesam_*.pt` there;
    else a name there, else a path."""
    directory = checkpoints_dir() if directory is None else Path(directory)
    name = str(name_or_path)
    if name == "default":
        chosen = directory / DEFAULT_FILE
        if chosen.is_file():
            target = directory / chosen.read_text().strip()
            if not target.is_file() or not target.name.startswith("pgesam_"):
                raise CheckpointError(f"{chosen} names {target.name!r}, which is not a model "
                                      f"file in {directory}: write an existing pgesam_*.pt "
                                      "name there, or delete it to use the newest")
            return target
        found = sorted(directory.glob("pgesam_*.pt"), key=lambda p: (p.stat().st_mtime, p.name))
        if not found:
            raise CheckpointError(f"no bundled model in {directory}: train one with "
                                  f"`{TRAIN_HINT}` and copy the pgesam_*.pt it writes there")
        return found[-1]
    p = Path(name).expanduser()
    if p.is_file():
        return p
    if p.is_dir():  # a run's folder, or a checkpoints folder
        inside = sorted(p.glob("pgesam_*.pt"), key=lambda q: (q.stat().st_mtime, q.name))
        hint = (f"pass the model file in it, e.g. --model {inside[-1]}" if inside else
                "it holds no model file (pgesam_*.pt); pass one")
        raise CheckpointError(f"model {name!r} is a folder: {hint}")
    for cand in (directory / name, directory / f"{name}.pt"):
        if cand.is_file():
            return cand
    stem = Path(name).name.removesuffix(".pt")
    if stem in SUPERSEDED:
        what, commit = SUPERSEDED[stem]
        base = SUPERSEDED_BASES.get(stem)
        need = (f" and its base {base}.pt (`git show {commit}:checkpoints/{base}.pt > "
                f"checkpoints/{base}.pt`)"
                if base is not None and not (directory / f"{base}.pt").is_file() else "")
        raise CheckpointError(
            f"model {stem} was {what}; it is no longer shipped in {directory}. Get it back "
            f"from the repository's history: `git show {commit}:checkpoints/{stem}.pt > "
            f"checkpoints/{stem}.pt`{need}, then --model {stem}; or play with --model default")
    avail = ", ".join(sorted(q.stem for q in directory.glob("pgesam_*.pt"))) or "none"
    raise CheckpointError(f"model {name!r} not found (not a file, not in {directory}; "
                          f"available: {avail}); pass a path or `default`")


def read_model_payload(path: Path) -> tuple[dict[str, Any], str]:
    """Verified payload of a model file and its id (`<stem>-<hash8>`)."""
    obj, model_id, _ = read_model_payload_verified(path)
    return obj, model_id


def read_model_payload_verified(path: Path) -> tuple[dict[str, Any], str, bool]:
    """`read_model_payload`, and whether a checksum vouched for the bytes (the hash in the
    file's name or the checksum inside it); False for an older file without an inner
    checksum that was renamed: it reads, but damage could go unnoticed."""
    obj, model_id, verified = read_stored_payload(path)
    if obj.get("base") is not None:
        obj = _unpack(Path(path), obj)
    return obj, model_id, verified


def read_stored_payload(path: Path) -> tuple[dict[str, Any], str, bool]:
    """As `read_model_payload_verified`, with a packed model left packed (as stored)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror}); check the path") from e
    digest = short_hash(data)
    m = _HASHED_NAME.match(path.name)
    if m and m.group("hash") != digest:
        raise CheckpointError(f"{path}: content hash {digest} does not match the name's "
                              f"{m.group('hash')}: the file is damaged or was modified; "
                              f"replace it")
    obj = _read_payload(path, data, FORMAT)
    verified = m is not None or CONTENT_KEY in obj
    # Files from before CONTENT_KEY carry their hash only in their name (checked above).
    if CONTENT_KEY in obj and obj[CONTENT_KEY] != content_digest(obj):
        raise CheckpointError(f"{path}: its contents do not match the checksum it carries: "
                              "the file is damaged or was modified; replace it")
    missing = [k for k in MODEL_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: missing keys {', '.join(missing)}; "
                              f"not a complete model file, retrain with `{TRAIN_HINT}`")
    bad_points = [p for p in obj["training_points"]
                  if not isinstance(p, dict) or any(k not in p for k in TRAINING_POINT_KEYS)]
    if bad_points:
        raise CheckpointError(f"{path}: training_points need keys "
                              f"{', '.join(TRAINING_POINT_KEYS)}; the file is damaged, retrain")
    if obj.get("spectral_memory") is not None:  # checked here: a damaged one never loads
        SpectralMemory.from_payload(obj["spectral_memory"], str(path))
    stem = m.group("stem") if m else path.stem
    return obj, f"{stem}-{digest}", verified


def meta_from_payload(obj: dict[str, Any]) -> ModelMeta:
    lo, hi = obj["pitch_range"]
    return ModelMeta(
        config_name=str(obj["config_name"]),
        codec_name=str(obj["codec"]["name"]),
        codec_config=dict(obj["codec"].get("config") or {}),
        normalisation=dict(obj["normalisation"] or {}),
        pitch_range=(int(lo), int(hi)),
        instrument_names=list(obj["instrument_names"]),
        family_names=list(obj["family_names"]),
        training_points=[dict(p) for p in obj["training_points"]],
        training=dict(obj["training"] or {}),
    )


def build_vae(cfg_dict: dict[str, Any], state: dict[str, torch.Tensor] | None,
              source: Path | str) -> TimbreVAE:
    """Rebuild a TimbreVAE from a stored config (and weights); errors name `source`."""
    from pgesam_live.model.vae import TimbreVAE, VAEConfig
    return _build(TimbreVAE, VAEConfig, cfg_dict, state, source, "VAE")


def build_transformer(cfg_dict: dict[str, Any], state: dict[str, torch.Tensor] | None,
                      source: Path | str) -> Decoder:
    """Rebuild the Transformer (either decoder) from a stored config (and weights)."""
    from pgesam_live.model.parallel import make_transformer
    from pgesam_live.model.transformer import TransformerConfig
    return _build(make_transformer, TransformerConfig, cfg_dict, state, source, "Transformer")


def _build(model_cls: Any, cfg_cls: type, cfg_dict: dict[str, Any],
           state: dict[str, torch.Tensor] | None, source: Path | str, what: str) -> Any:
    try:
        model = model_cls(config_from_dict(cfg_cls, cfg_dict))
    except (TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{source}: stored {what} config does not fit this version "
                              f"({e}); retrain with `{TRAIN_HINT}`") from e
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{source}: {what} weights do not match its config "
                                  f"({first[:160]}); the file is damaged, retrain") from e
    model.eval()
    return model


def load_model(name_or_path: str | Path = "default", device: str | torch.device = "cpu",
               directory: Path | None = None) -> ModelBundle:
    """Load a model file (see `resolve_model`) onto `device`, verified, in eval mode."""
    from pgesam_live.model.codec import get_codec

    path = resolve_model(name_or_path, directory)
    obj, model_id = read_model_payload(path)
    meta = meta_from_payload(obj)
    vae = build_vae(obj["vae_config"], obj["vae_state"], path)
    transformer = build_transformer(obj["transformer_config"], obj["transformer_state"], path)
    try:
        codec = get_codec(meta.codec_name, **meta.codec_config)
    except (CodecError, TypeError) as e:
        raise CheckpointError(f"{path}: its codec {meta.codec_name!r} cannot be built: "
                              f"{e}") from e
    now = codec_normalisation(codec)
    if meta.normalisation and now != {k: float(v) for k, v in meta.normalisation.items()}:
        raise CheckpointError(f"{path}: trained with codec normalisation {meta.normalisation},"
                              f" this codec uses {now}; retrain with `{TRAIN_HINT}`")
    if codec.dim != transformer.cfg.frame_dim:
        raise CheckpointError(f"{path}: frames of {transformer.cfg.frame_dim} dims but codec "
                              f"{meta.codec_name!r} makes {codec.dim}; retrain with "
                              f"`{TRAIN_HINT}`")
    dev = torch.device(device)
    for m in (vae, transformer):
        m.to(dev)
        for p in m.parameters():
            p.requires_grad_(False)
    memory = None
    if obj.get("spectral_memory") is not None:
        memory = SpectralMemory.from_payload(obj["spectral_memory"], str(path))
        if memory.n_harmonics != getattr(codec, "n_harmonics", None):
            raise CheckpointError(f"{path}: its spectral memory holds {memory.n_harmonics} "
                                  f"harmonics, codec {meta.codec_name!r} makes "
                                  f"{getattr(codec, 'n_harmonics', 'none')}; rebuild it with "
                                  "`pgesam-live memory`")
        memory = memory.to(dev)
    return ModelBundle(vae=vae, transformer=transformer, codec=codec.to(dev), meta=meta,
                       id=model_id, path=path, memory=memory)


def save_with_memory(model: Path | str, memory: SpectralMemory, directory: Path | str) -> Path:
    """`model` (packed or not, kept as it is stored) with `memory` in it, as a new model file
    in `directory` (a packed model's base must sit there too when it is loaded)."""
    obj, model_id, _ = read_stored_payload(Path(model))
    payload = {k: v for k, v in obj.items() if k != CONTENT_KEY}
    payload["spectral_memory"] = memory.to_payload()
    payload["training"] = {**dict(payload.get("training") or {}),
                           "spectral_memory": {"from": memory.source, "model": model_id}}
    return _write_model_payload(directory, payload)
