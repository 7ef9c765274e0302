"""Training: `pgesam-live train vae|transformer|all --data DIR [...]`.

Stage `vae`: the timbre VAE on the codec frames of the training split (AdamW, the authors'
lr 3e-4, wd 0.05, lr halved at 50/60/70/80/90 % of the steps; loss schedules driven by the
progress p = step / steps). Stage `transformer`: the VAE frozen; each note is conditioned on
its VAE mean plus noise 0.01 * sigma and its true pitch; teacher-forced MSE on the frames.
`all` runs both and writes the model file (`pgesam_<config>_<codec>-<hash8>.pt`) into the run
directory; `transformer` alone writes it too.

The run directory holds `vae.pt` and `transformer.pt` (training states: weights, optimiser,
step, RNG; written atomically every --ckpt-every steps and at the end), `log.jsonl` (losses)
and the model file. `--resume` continues each stage from its state; a finished stage is
skipped.

Speed on a CPU: the whole frame set lives in memory as one tensor and batches are indexed
from it (no DataLoader). VAE batches are drawn as groups of notes of the same instrument so
that the neighbour loss's attraction term has pairs in every batch, even at small batch
sizes. Under `torchrun --nproc_per_node=N` each process takes its shard of every global batch
(the batch RNG is shared, so only rank 0's state needs saving) and DistributedDataParallel
averages the gradients (gloo on CPU, nccl on GPUs); only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pgesam_live.errors import CheckpointError, ConfigError, DataError
from pgesam_live.model import lora
from pgesam_live.model.build import CONFIG_NAMES, DEFAULT_DECODER, build_models, make_configs
from pgesam_live.model.checkpoints import (
    ModelMeta,
    build_transformer,
    build_vae,
    codec_normalisation,
    config_to_dict,
    load_training_state,
    make_training_points,
    read_model_payload,
    save_model,
    save_training_state,
)
from pgesam_live.model.codec import Codec, HarmonicCodec, get_codec
from pgesam_live.model.device import resolve_device
from pgesam_live.model.memory import EPS as BLEND_EPS
from pgesam_live.model.memory import K_NEAREST, nearest_weights
from pgesam_live.model.parallel import (
    Decoder,
    ParallelFrameTransformer,
    grow_map_grid,
    make_transformer,
)
from pgesam_live.model.remap import move_decoder_to_map
from pgesam_live.model.soundfont import NOTE_HOLD_S
from pgesam_live.model.transformer import DECODERS
from pgesam_live.model.vae import TimbreVAE, VAEConfig, vae_losses
from pgesam_live.notes import parse_pitch_span

DEFAULT_PITCH_RANGE = (48, 72)  # the authors'
VAE_MILESTONES = (0.5, 0.6, 0.7, 0.8, 0.9)  # lr halved at these fractions of the steps

# Per config: steps, (global) batch size and lr of each stage. The paper's batch sizes are the
# authors'; its step counts are ~their epochs on ~2,750 notes. Small is tuned for this CPU.
STAGE_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "tiny": {"vae": {"steps": 200, "batch": 16, "lr": 1e-3},
             "transformer": {"steps": 200, "batch": 8, "lr": 1e-3}},
    "small": {"vae": {"steps": 8000, "batch": 64, "lr": 3e-4},
              "transformer": {"steps": 12000, "batch": 32, "lr": 3e-4}},
    "paper": {"vae": {"steps": 160000, "batch": 256, "lr": 3e-4},
              "transformer": {"steps": 200000, "batch": 64, "lr": 1e-4}},
}
NOTES_PER_INSTRUMENT = 4  # VAE batches: groups of this many notes of one instrument
COND_NOISE = 0.01  # transformer conditioning: VAE mean + COND_NOISE * sigma * N(0, 1)
GRAD_CLIP = 1.0


# --- options ------------------------------------------------------------------------------------

# Per-channel weights of the Transformer's frame MSE. The harmonic codec's channel 0 is the
# pitch, (MIDI - 20) / 100: a 50-cent error is 0.005, whose square is lost among 98 channels
# of plain MSE, yet it decides whether a note is in tune. At 300 a 50-cent error costs about
# a sixth of a typical frame's whole error (1000 made training oscillate at lr 5e-4).
CHANNEL_WEIGHTS: dict[str, dict[int, float]] = {"harmonic": {0: 300.0}, "partials": {0: 300.0}}


def channel_weights(codec_name: str, dim: int, device: torch.device | str = "cpu"
                    ) -> torch.Tensor:
    """Loss weight per frame channel: [D], ones except where CHANNEL_WEIGHTS says."""
    w = torch.ones(dim)
    for ch, val in CHANNEL_WEIGHTS.get(codec_name, {}).items():
        w[ch] = val
    return w.to(device)


# Defaults of the parallel decoder's loss options (TrainOptions.loss_value).
LOSS_DEFAULTS = {"delta_weight": 1.0, "spectral_weight": 0.0, "point_noise": 0.0,
                 "pitch_weight": CHANNEL_WEIGHTS["harmonic"][0], "loudness_weight": 10.0,
                 "log_dist_weight": 0.0, "instrument_points": 0.0, "release_weight": 0.0,
                 "blend_points": 0.0, "blend_power": 2.0, "contrast_weight": 0.0}


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class TrainOptions:
    """Everything `pgesam-live train` takes (see cli.py), parsed and checked."""

    stage: str
    data: Path
    out: Path
    config: str = "small"
    config_given: bool = False  # --config on the command line (a resume then says it differs)
    codec: str = "harmonic"
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    vae: Path | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    pitch_range: tuple[int, int] | None = None
    ckpt_every: int = 500
    max_instruments_per_family: int | None = None
    workers: int = 0
    progress: bool = True
    frames_per_step: int | None = None  # override the config's Transformer frames per step
    # Std of Gaussian noise added to the Transformer's teacher-forced input frames (not to its
    # targets), against a decoder that copies the previous frame and under-uses the
    # conditioning (0.05 for 400 steps did not help the bundled model: see its card).
    # None: the resumed run's value, else 0 (off).
    input_noise: float | None = None
    # Parallel scheduled sampling against free-running drift: each decoder input group is,
    # with this probability, the model's own prediction from `self_feed_passes` chained
    # no-grad passes instead of the true frames (targets stay the true frames). None: the
    # resumed run's value, else 0 (off).
    self_feed: float | None = None
    self_feed_passes: int | None = None
    # With --resume on a finished Transformer run: another phase from its weights, optimiser
    # and sampler, with the step count and learning-rate schedule restarted (--steps, --lr).
    fine_tune: bool = False
    # Transformer stage: start from a model file's Transformer and VAE instead of a fresh
    # Transformer and a VAE run.
    init: Path | None = None
    # With init: train only a rank-r delta of each large weight plus the small tensors
    # (lora.py), so the result packs small.
    lora_rank: int | None = None
    # Which Transformer decoder a new run builds (autoregressive: the authors'; parallel:
    # model/parallel.py). None: the resumed run's or the init model's, else DEFAULT_DECODER.
    decoder: str | None = None
    # Parallel decoder: weight of the loss on frame-to-frame differences (against jitter).
    # These four: None = the resumed run's value, else LOSS_DEFAULTS.
    delta_weight: float | None = None
    # Parallel decoder: weight of decoded_spectral_loss (0 = off) and extra Gaussian noise (map
    # units) on the training points, for a smoother map between the training instruments.
    spectral_weight: float | None = None
    point_noise: float | None = None
    # Loss weight of the harmonic codec's pitch channel (None: CHANNEL_WEIGHTS' 300).
    pitch_weight: float | None = None
    # Parallel decoder, harmonic codec: weight of the loudness channel in audible_frame_loss
    # (None: the resumed run's, else LOSS_DEFAULTS' 10).
    loudness_weight: float | None = None
    # Parallel decoder, harmonic codec: weight of log_distribution_loss (0 = off).
    log_dist_weight: float | None = None
    # Parallel decoder, harmonic codec: weight of release_loudness_loss, the loudness error
    # over the first RELEASE_WINDOW_S after the training notes' note-off (0 = off).
    release_weight: float | None = None
    # Parallel decoder: the share of training notes conditioned on their instrument's point
    # (the mean of its notes' VAE means: the training point the instrument plays at) instead
    # of the note's own VAE mean (0 = off, the paper's). The notes of one instrument scatter
    # about its point farther (median 0.022) than the nearest other instrument's point lies
    # (0.014), so at a named point the per-note decoder hears a blend of its neighbours.
    instrument_points: float | None = None
    # Parallel decoder: the share of training notes replaced by a map blend (MapBlender): a
    # random point of the instruments' points' box, its target the inverse-distance blend of the
    # notes at the same pitch of the instruments nearest to it (0 = off). The box is mostly
    # space between the instruments (the 5 x 5 map grid lies 0.02-0.36 from the nearest, the
    # instruments 0.015 from each other), which nothing else trains.
    blend_points: float | None = None
    # The blend's sharpness: weights (d^2 + EPS^2)^(-q/2) for distance d; 2 (inverse square)
    # spreads a point between its neighbours, higher keeps each instrument's own sound
    # farther from its point (a sharper map; 64: nearly the nearest instrument alone).
    blend_power: float | None = None
    # Parallel decoder: weight of a loss that pushes each note's harmonic spectrum (in dB) away
    # from that of the nearest other instrument on the map at the same pitch, wherever it is
    # not already nearer its own (contrast_loss): the decoder regresses the mean of a crowded
    # point, which is nearer a neighbour than the note's own instrument (identity_nn).
    contrast_weight: float | None = None
    # Parallel decoder: a learned feature grid over the map (parallel.MapGrid) of these side
    # lengths, read from block 0 in a new run, or, grown into an --init model that has none,
    # by the blocks that train (--train-blocks). Stored in the model's config.
    map_grid: tuple[int, ...] | None = None
    # Parallel decoder: train only the last K blocks, the output layer and the map grid; the
    # frozen blocks run once per note (at its own point and at its instrument's point, with
    # no point noise) and are cached, so a step costs a fraction of a whole one.
    # None: the resumed run's, else 0 (every weight trains).
    train_blocks: int | None = None
    # Parallel decoder, --init a model with a map grid: its grid is read from this block on
    # (the same weights; a lower block than the model's makes the first blocks read the
    # map's fine detail too, and the whole decoder then trains with it).
    map_grid_from_block: int | None = None
    # VAE of a new run: read this many frames of each note (None: the config's; `small` reads
    # 96, 1.28 s), average-pooled so the encoder sees about as many steps as the config's.
    vae_frames: int | None = None

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainOptions:
        args: dict[str, Any] = vars(ns)
        g = args.get
        steps, batch = g("steps"), g("batch_size")
        stage = str(g("stage"))
        if stage not in ("vae", "transformer", "all"):
            raise ConfigError(f"unknown stage {stage!r}: choose vae, transformer or all")
        config = str(g("config") or "small")  # (None: not given)
        config_given = g("config") is not None
        if config not in CONFIG_NAMES:
            raise ConfigError(f"unknown --config {config!r}: choose {', '.join(CONFIG_NAMES)}")
        move_only = stage == "transformer" and bool(g("init")) and bool(g("vae"))
        for name in ("steps", "batch_size", "ckpt_every"):
            v = g(name)
            if v is None or int(v) >= 1 or (name == "steps" and int(v) == 0 and move_only):
                continue
            why = (" (0 only with --init and --vae: move the decoder to the new map and train "
                   "nothing)" if name == "steps" else "")
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}{why}")
        noise_arg = g("input_noise")
        input_noise = None if noise_arg is None else float(noise_arg)
        if input_noise is not None and not 0.0 <= input_noise < 1.0:
            raise ConfigError(f"--input-noise must be in [0, 1), got {noise_arg}")
        feed_arg, passes_arg = g("self_feed"), g("self_feed_passes")
        self_feed = None if feed_arg is None else float(feed_arg)
        if self_feed is not None and not 0.0 <= self_feed <= 1.0:
            raise ConfigError(f"--self-feed must be in [0, 1], got {feed_arg}")
        if passes_arg is not None and not 1 <= int(passes_arg) <= 8:
            raise ConfigError(f"--self-feed-passes must be in 1..8, got {passes_arg}")
        if g("fine_tune") and (stage != "transformer" or not g("resume")):
            raise ConfigError("--fine-tune goes with `train transformer --resume` (another "
                              "phase of a finished Transformer run)")
        init, lora_rank = g("init"), _opt_int(g("lora_rank"))
        if init is not None and stage != "transformer":
            raise ConfigError("--init goes with `train transformer` (start its Transformer "
                              "from a model file)")
        if init is not None and g("fine_tune"):
            raise ConfigError("--init starts a new run from a model file; --fine-tune continues "
                              "a run of --out: use one of them")
        if lora_rank is not None and (init is None or not 1 <= lora_rank <= 256):
            raise ConfigError("--lora-rank R (1..256) goes with --init MODEL: a low-rank "
                              f"fine-tune of that model (got rank {lora_rank}, "
                              f"init {init or 'none'})")
        lr = g("lr")
        if lr is not None and not float(lr) > 0:
            raise ConfigError(f"--lr must be > 0, got {lr}")
        workers = g("workers")
        if workers is not None and not 0 <= int(workers) <= 64:
            raise ConfigError(f"--workers must be in 0..64 (0: load in this process), got "
                              f"{workers}")
        fps = g("frames_per_step")
        if fps is not None and not 1 <= int(fps) <= 64:
            raise ConfigError(f"--frames-per-step must be in 1..64, got {fps}")
        mipf = g("max_instruments_per_family")
        if mipf is not None and int(mipf) < 1:
            raise ConfigError(f"--max-instruments-per-family must be >= 1, got {mipf}")
        decoder = g("decoder")
        if decoder is not None and decoder not in DECODERS:
            raise ConfigError(f"--decoder {decoder!r}: choose {' or '.join(DECODERS)}")
        for name, low, top in (("delta_weight", 0.0, 100.0), ("spectral_weight", 0.0, 100.0),
                               ("point_noise", 0.0, 1.0), ("pitch_weight", 0.0, 1e5),
                               ("loudness_weight", 0.0, 1e5), ("log_dist_weight", 0.0, 100.0),
                               ("instrument_points", 0.0, 1.0), ("release_weight", 0.0, 1e5),
                               ("blend_points", 0.0, 1.0), ("blend_power", 1.0, 256.0),
                               ("contrast_weight", 0.0, 100.0)):
            v = g(name)
            if v is not None and not low <= float(v) <= top:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [{low:g}, {top:g}], "
                                  f"got {v}")
        grid_arg, tb_arg = g("map_grid"), g("train_blocks")
        map_grid = None if grid_arg is None else parse_map_grid(grid_arg)
        if tb_arg is not None and not 1 <= int(tb_arg) <= 64:
            raise ConfigError(f"--train-blocks must be in 1..64, got {tb_arg}")
        if (map_grid or tb_arg is not None) and stage != "transformer":
            raise ConfigError("--map-grid and --train-blocks go with `train transformer`")
        if tb_arg is not None and init is None and not g("resume"):
            raise ConfigError("--train-blocks trains the last blocks of a trained decoder: give "
                              "it --init MODEL (or --resume such a run)")
        if tb_arg is not None and lora_rank:
            raise ConfigError("--train-blocks and --lora-rank are two ways of training part of "
                              "a model: use one")
        if decoder == "parallel" and (g("self_feed") or g("input_noise")):
            raise ConfigError("--self-feed and --input-noise feed frames to the autoregressive "
                              "decoder; the parallel decoder reads none: leave them out")
        vae_frames = _opt_int(g("vae_frames"))
        if vae_frames is not None and (stage == "transformer" or g("resume")
                                       or not 4 <= vae_frames <= 4096):
            raise ConfigError("--vae-frames N (4..4096) sets the frames a new VAE reads: use it "
                              f"with `train vae` or `train all`, not resuming (got {vae_frames})")
        if stage == "vae":  # Transformer-only options on a VAE run would be silently unused
            given = [f"--{k.replace('_', '-')}" for k in
                     ("frames_per_step", "input_noise", "self_feed", "self_feed_passes",
                      "decoder")
                     if g(k) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)}: Transformer options; use them with "
                                  "`train transformer` or `train all`")
        return cls(
            stage=stage, data=Path(str(g("data"))), out=Path(str(g("out") or "runs/default")),
            config=config, config_given=config_given, codec=str(g("codec") or "harmonic"),
            steps=None if steps is None else int(steps),
            batch_size=None if batch is None else int(batch),
            lr=None if lr is None else float(lr),
            vae=None if g("vae") is None else Path(str(g("vae"))),
            resume=bool(g("resume")), seed=int(g("seed") or 0),
            device=str(g("device") or "auto"),
            pitch_range=None if g("pitch_range") is None else parse_pitch_range(g("pitch_range")),
            ckpt_every=int(g("ckpt_every") or 500),
            max_instruments_per_family=g("max_instruments_per_family"),
            workers=int(g("workers") or 0),
            progress=bool(g("progress") if g("progress") is not None else True),
            frames_per_step=_opt_int(g("frames_per_step")),
            input_noise=input_noise,
            self_feed=self_feed,
            self_feed_passes=_opt_int(passes_arg),
            fine_tune=bool(g("fine_tune")),
            init=None if init is None else Path(str(init)),
            lora_rank=lora_rank,
            decoder=None if decoder is None else str(decoder),
            delta_weight=_opt_float(g("delta_weight")),
            spectral_weight=_opt_float(g("spectral_weight")),
            point_noise=_opt_float(g("point_noise")),
            pitch_weight=_opt_float(g("pitch_weight")),
            loudness_weight=_opt_float(g("loudness_weight")),
            log_dist_weight=_opt_float(g("log_dist_weight")),
            release_weight=_opt_float(g("release_weight")),
            instrument_points=_opt_float(g("instrument_points")),
            blend_points=_opt_float(g("blend_points")),
            blend_power=_opt_float(g("blend_power")),
            contrast_weight=_opt_float(g("contrast_weight")),
            map_grid=map_grid,
            train_blocks=_opt_int(tb_arg),
            map_grid_from_block=_opt_int(g("map_grid_from_block")),
            vae_frames=vae_frames,
        )

    def loss_value(self, name: str, saved: dict[str, Any] | None) -> float:
        """A loss option (delta_weight, spectral_weight, point_noise, pitch_weight,
        loudness_weight, log_dist_weight, release_weight, instrument_points, blend_points,
        blend_power, contrast_weight): given,
        else the resumed run's, else LOSS_DEFAULTS."""
        given = getattr(self, name)
        if given is not None:
            return float(given)
        stored = (saved or {}).get("loss_options", {}).get(name)
        return float(stored) if stored is not None else LOSS_DEFAULTS[name]

    def stage_value(self, stage: str, key: str) -> Any:
        """--steps / --batch-size / --lr, else the config's default for `stage`."""
        given = {"steps": self.steps, "batch": self.batch_size, "lr": self.lr}[key]
        if given is not None:
            return given
        v = STAGE_DEFAULTS[self.config][stage][key]
        return float(v) if key == "lr" else int(v)


def parse_map_grid(text: Any) -> tuple[int, ...]:
    """'16,32,64' -> (16, 32, 64): the side lengths of a map grid's tables (2..1024 each)."""
    try:
        sides = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        sides = ()
    if not sides or len(sides) > 8 or any(not 2 <= r <= 1024 for r in sides):
        raise ConfigError(f"--map-grid {text!r}: give up to 8 side lengths in 2..1024, "
                          "comma-separated, e.g. 16,32,64,128,256")
    return sides


def parse_pitch_range(text: Any) -> tuple[int, int]:
    """`48-72` or `C3-C5` -> (48, 72), inclusive MIDI pitches."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        lo, hi = int(text[0]), int(text[1])
    else:
        span = parse_pitch_span(str(text))
        if span is None:
            raise ConfigError(f"--pitch-range {text!r}: write LOW-HIGH as MIDI numbers or note "
                              f"names, e.g. 48-72 or C3-C5")
        lo, hi = span
    if not 0 <= lo <= hi <= 127:
        raise ConfigError(f"--pitch-range {text!r}: need 0 <= LOW <= HIGH <= 127, e.g. 48-72")
    return lo, hi


# --- configs and models -------------------------------------------------------------------------

# --- distributed context ------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialised:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.initialised and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.initialised = False


def setup_dist(device: str) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device)
    if dev.type == "cuda":
        n_gpu = torch.cuda.device_count()
        if local_world > n_gpu:
            raise ConfigError(f"{local_world} processes per node but {n_gpu} GPU(s): use "
                              f"--nproc_per_node={n_gpu} or --device cpu")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        # TF32 matmuls: several times faster on Ampere+ and plenty for this regression.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # Share the cores between the processes on this machine instead of oversubscribing.
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        n = int(os.environ.get("PGESAM_TORCH_THREADS") or 0) or cores // max(1, local_world)
        torch.set_num_threads(max(1, n))
    d = Dist(rank=rank, world=world, local_rank=local_rank, local_world=local_world, device=dev)
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # Long timeout: the other ranks wait at a barrier while rank 0 encodes the data set,
        # which takes far longer than the 30-minute default on a full NSynth-size set.
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world,
                                             timeout=timedelta(hours=12))
        d.initialised = True
    return d


def hardware(d: Dist) -> dict[str, Any]:
    h: dict[str, Any] = {"device": d.device.type, "world_size": d.world,
                         "cpu": platform.processor() or platform.machine(),
                         "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    if d.device.type == "cuda":
        h["gpu"] = torch.cuda.get_device_name(d.device)
    return h


# --- data ---------------------------------------------------------------------------------------

@dataclass
class TrainData:
    """The training split in memory. frames [N, T, D] float32 on the device; pitch, family,
    instrument [N] int64 on the device (pitch in MIDI); names for the instrument indices."""

    frames: torch.Tensor
    pitch: torch.Tensor
    family: torch.Tensor
    instrument: torch.Tensor
    instrument_names: list[str]
    instrument_family: list[str]  # family name of each instrument index


def load_train_data(opts: TrainOptions, codec: Codec, pitch_range: tuple[int, int],
                    n_frames: int, device: torch.device, d: Dist) -> TrainData:
    from pgesam_live.model.data import FAMILIES, load_frames, notes_duration_s

    if not opts.data.is_dir():
        raise DataError(f"--data {opts.data}: no such directory; pass an NSynth-format set "
                        f"(make one with `pgesam-live dataset soundfont --out DIR`)")
    # Rank 0 encodes and fills the frame cache first; the others then read the cache.
    if not d.main:
        d.barrier()
    duration_s = notes_duration_s(n_frames, codec.frame_rate_hz)
    fs = load_frames(opts.data, "train", codec, pitch_range=pitch_range, velocities=None,
                     max_instruments_per_family=opts.max_instruments_per_family,
                     n_frames=n_frames, cache=True, progress=d.main and opts.progress,
                     duration_s=duration_s)
    if d.main:
        d.barrier()
    if len(fs.pitch) == 0:
        raise DataError(f"{opts.data}: no training notes in MIDI {pitch_range[0]}.."
                        f"{pitch_range[1]}; check --pitch-range and the data set")
    if fs.frames.shape[1] < n_frames:
        raise DataError(f"{opts.data}: notes give {fs.frames.shape[1]} frames, the model "
                        f"needs {n_frames}; use 4-second notes")
    instrument = fs.instrument.long()
    fam_of: list[str] = ["?"] * len(fs.instrument_names)
    for i, f in zip(instrument.tolist(), fs.family.long().tolist(), strict=True):
        fam_of[i] = FAMILIES[f]
    return TrainData(frames=fs.frames[:, :n_frames].float().contiguous().to(device),
                     pitch=fs.pitch.long().to(device), family=fs.family.long().to(device),
                     instrument=instrument.to(device),
                     instrument_names=list(fs.instrument_names), instrument_family=fam_of)


class BatchSampler:
    """Global batches of note indices from a seeded CPU generator shared by all ranks.

    `grouped`: each batch is B / m instruments x m notes of each (m = notes_per_group), so
    same-instrument pairs exist in every batch; else uniform. `shard` gives a rank its part,
    keeping groups whole.
    """

    def __init__(self, instrument: torch.Tensor, batch_size: int, seed: int,
                 notes_per_group: int = 1) -> None:
        self.n = int(instrument.numel())
        self.batch_size = batch_size
        self.m = max(1, min(notes_per_group, batch_size))
        self.gen = torch.Generator().manual_seed(int(seed))
        inst = instrument.cpu()
        self.n_inst = int(inst.max()) + 1 if self.n else 0
        counts = torch.bincount(inst, minlength=self.n_inst)
        order = torch.argsort(inst, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        self.counts, self.starts, self.order = counts, starts, order
        self.present = torch.nonzero(counts > 0).flatten()

    def next(self) -> torch.Tensor:
        """[B] int64 indices (CPU)."""
        if self.m == 1:
            return torch.randint(self.n, (self.batch_size,), generator=self.gen)
        g = max(1, self.batch_size // self.m)
        k = len(self.present)
        if g <= k:
            pick = self.present[torch.randperm(k, generator=self.gen)[:g]]
        else:
            pick = self.present[torch.randint(k, (g,), generator=self.gen)]
        r = torch.rand(g, self.m, generator=self.gen)
        within = (r * self.counts[pick].unsqueeze(1)).long()  # [g, m]
        return self.order[self.starts[pick].unsqueeze(1) + within].reshape(-1)

    def shard(self, idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        if world == 1:
            return idx
        rows = idx.view(-1, self.m) if self.m > 1 else idx.view(-1, 1)
        if rows.shape[0] < world:
            raise ConfigError(f"batch of {idx.numel()} is too small for {world} processes; "
                              f"raise --batch-size")
        return rows[rank::world].reshape(-1)

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def load_state(self, s: torch.Tensor) -> None:
        self.gen.set_state(s)


# --- learning-rate schedules --------------------------------------------------------------------

def vae_lr(base_lr: float, step: int, steps: int) -> float:
    """The authors': halved at 50/60/70/80/90 % of the steps."""
    passed = sum(step >= m * steps for m in VAE_MILESTONES)
    return base_lr * 0.5 ** passed


def transformer_lr(base_lr: float, step: int, steps: int) -> float:
    """Linear warm-up (5 %, at most 500 steps), then cosine down to 10 %: stabler than the
    authors' constant rate at the higher rates a small model on a CPU wants."""
    warm = max(1, min(500, steps // 20))
    if step < warm:
        return base_lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


# --- the loop's shared parts --------------------------------------------------------------------

def _rng_state(d: Dist) -> dict[str, Any]:
    s: dict[str, Any] = {"torch": torch.get_rng_state()}
    if d.device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(d.device)
    return s


def _set_rng_state(s: dict[str, Any], d: Dist, seed: int, step: int) -> None:
    torch.set_rng_state(s["torch"])
    if d.device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], d.device)
    if d.rank:  # only rank 0's stream was saved: give the others their own, reproducibly
        torch.manual_seed(seed * 1000003 + d.rank * 7919 + step)


class RunLog:
    """`log.jsonl` in the run directory: one JSON object per logged step (rank 0 only)."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.path = out / "log.jsonl"
        self.enabled = enabled

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def _log_every(steps: int) -> int:
    return 1 if steps <= 200 else 10


@contextmanager
def _stop_between_steps() -> Iterator[threading.Event]:
    """Ctrl-C during training ends it after the step under way (its state whole); a second
    Ctrl-C stops at once. Left alone where SIGINT is ignored (a script's background job) or
    off the main thread."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class _Interruptible:
    """A training loop's Ctrl-C: between steps (`begin` sees the flag) the run ends after a
    whole step; a KeyboardInterrupt inside a step saves the sampler and RNG states from before
    it, so the resumed run redoes it. Either way the state is saved and the `--resume` line is
    said; the KeyboardInterrupt goes on (exit 130)."""

    def __init__(self, d: Dist, opts: TrainOptions, stage: str, steps: int, sampler: Any,
                 bar: Any, save: Any, step: Any) -> None:
        self.d, self.opts, self.stage, self.steps = d, opts, stage, steps
        self.sampler, self.bar, self.save, self.step = sampler, bar, save, step
        self.before: tuple[Any, Any] | None = None
        self._stop = _stop_between_steps()

    def __enter__(self) -> _Interruptible:
        self.flag = self._stop.__enter__()
        return self

    def begin(self) -> None:
        if self.flag.is_set():  # Ctrl-C: the last step is whole
            raise KeyboardInterrupt
        self.before = (self.sampler.state(), _rng_state(self.d))

    def end(self) -> None:
        self.before = None  # this step is whole: save the states as they are

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            if kind is KeyboardInterrupt and self.d.main:
                self.bar.close()
                self.save(False, self.before)
                o = self.opts
                again = f"pgesam-live train {o.stage} --data {o.data} --out {o.out} --resume"
                print(f"\npgesam-live: {self.stage} interrupted at step {self.step()} of "
                      f"{self.steps}; saved {_state_path(o.out, self.stage)}. Go on with: "
                      f"{again}", file=sys.stderr)
        finally:
            self._stop.__exit__(kind, exc, tb)


def _check_finite(loss: torch.Tensor, stage: str, step: int, out: Path) -> None:
    if not bool(torch.isfinite(loss)):
        raise ConfigError(f"{stage} loss is not finite at step {step}: lower --lr and rerun, "
                          f"or --resume from the last checkpoint in {out}")


def _wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [d.device.index] if d.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def _state_path(out: Path, stage: str) -> Path:
    return out / f"{stage}.pt"


def _start_state(opts: TrainOptions, stage: str) -> dict[str, Any] | None:
    """The stage's saved state when resuming, None to start fresh (refuses to overwrite)."""
    path = _state_path(opts.out, stage)
    if opts.resume:
        if path.is_file():
            return load_training_state(path, required=STATE_KEYS)
        print(f"pgesam-live: --resume: no {stage} run in {opts.out} yet; starting one",
              file=sys.stderr)
        return None
    if path.exists():
        raise ConfigError(f"{path} exists: pass --resume to continue that run, or choose "
                          f"another --out")
    return None


STATE_KEYS = ("stage", "step", "steps", "config_name", "model_config", "model", "optimizer",
              "rng", "sampler", "elapsed_s", "data")


# --- stage 1: the VAE ---------------------------------------------------------------------------

@dataclass
class VAEResult:
    vae: TimbreVAE
    data_meta: dict[str, Any]  # codec, pitch range, names, training points, training
    config_name: str
    # With --init MODEL --vae OTHER: MODEL's own VAE, whose map the decoder is moved from.
    moved_from: TimbreVAE | None = None


def vae_frames_config(cfg: VAEConfig, n_frames: int, note_frames: int) -> VAEConfig:
    """`cfg` reading the first n_frames of a note (at most note_frames, the whole note), its
    time pool scaled so the encoder sees about as many pooled steps as before: the `small`
    VAE reads 96 frames pooled 4x (24 steps); the whole 300-frame note, pooled 12x, is 25."""
    if n_frames > note_frames:
        raise ConfigError(f"--vae-frames {n_frames}: a note has {note_frames} frames")
    pool = max(1, round(cfg.time_pool * n_frames / cfg.n_frames))
    return dataclasses.replace(cfg, n_frames=n_frames, time_pool=pool)


def train_vae(opts: TrainOptions, d: Dist) -> VAEResult:
    saved = _start_state(opts, "vae")
    config = saved["config_name"] if saved else opts.config
    codec_name = saved["data"]["codec"]["name"] if saved else opts.codec
    pitch_range = (tuple(saved["data"]["pitch_range"]) if saved
                   else opts.pitch_range or DEFAULT_PITCH_RANGE)
    if saved and opts.config_given and config != opts.config:
        _say(d, f"resuming a {config!r} run (ignoring --config {opts.config})")
    if saved and str(saved["data"].get("data_dir", "")) not in ("", str(opts.data)):
        _say(d, f"note: this run was trained on {saved['data']['data_dir']}, resumed on "
                f"{opts.data}: the same splits? (held-out instruments must stay out)")
    codec = get_codec(codec_name).to(d.device)
    _, tr_cfg = make_configs(config, codec.dim, 1, pitch_range)  # type: ignore[arg-type]
    data = load_train_data(opts, codec, pitch_range, tr_cfg.n_frames,  # type: ignore[arg-type]
                           d.device, d)
    n_inst = len(data.instrument_names)
    if saved:
        vae = build_vae(saved["model_config"], saved["model"], _state_path(opts.out, "vae"))
        if vae.cfg.n_instruments != n_inst:
            raise CheckpointError(f"{_state_path(opts.out, 'vae')}: trained on "
                                  f"{vae.cfg.n_instruments} instruments, --data has {n_inst}; "
                                  f"resume with the same data")
    else:
        vae_cfg, _ = make_configs(config, codec.dim, n_inst, pitch_range)  # type: ignore[arg-type]
        if opts.vae_frames is not None:
            vae_cfg = vae_frames_config(vae_cfg, opts.vae_frames, tr_cfg.n_frames)
        torch.manual_seed(opts.seed)  # identical initial weights on every rank
        vae = TimbreVAE(vae_cfg)
    vae.to(d.device).train()
    cfg = vae.cfg
    steps = opts.steps or (int(saved["steps"]) if saved else opts.stage_value("vae", "steps"))
    batch = opts.batch_size or (int(saved["batch_size"]) if saved
                                else opts.stage_value("vae", "batch"))
    base_lr = opts.lr or (float(saved["base_lr"]) if saved else opts.stage_value("vae", "lr"))
    opt = torch.optim.AdamW(vae.parameters(), lr=base_lr, weight_decay=0.05)
    sampler = BatchSampler(data.instrument, batch, opts.seed, NOTES_PER_INSTRUMENT)
    step, elapsed0 = 0, 0.0
    torch.manual_seed(opts.seed * 1000003 + d.rank * 7919)
    if saved:
        opt.load_state_dict(saved["optimizer"])
        sampler.load_state(saved["sampler"])
        _set_rng_state(saved["rng"], d, opts.seed, int(saved["step"]))
        step, elapsed0 = int(saved["step"]), float(saved["elapsed_s"])
    model = _wrap_ddp(vae, d)
    lo = pitch_range[0]
    data_meta: dict[str, Any] = {
        "codec": {"name": codec.name, "config": _codec_config(codec)},
        "normalisation": codec_normalisation(codec),
        "pitch_range": list(pitch_range),
        "instrument_names": data.instrument_names,
        "instrument_family": data.instrument_family,
        "data_dir": str(opts.data),
        "n_notes": int(len(data.pitch)),
    }
    log = RunLog(opts.out, d.main)
    if d.main:
        opts.out.mkdir(parents=True, exist_ok=True)
        if step < steps:
            _say(d, f"vae: {len(data.pitch)} notes, {n_inst} instruments, config {config}, "
                    f"codec {codec.name}, {sum(p.numel() for p in vae.parameters())} params, "
                    f"steps {step}->{steps}, batch {batch}, device {d.device} x{d.world}")

    def save(final: bool, rewind: tuple[Any, Any] | None = None) -> None:
        # rewind: (sampler, RNG) states from before a step that was cut short
        if not d.main:
            return
        extra: dict[str, Any] = {}
        if final:
            extra["training_points"] = training_points(vae, data, d.device)
        save_training_state(_state_path(opts.out, "vae"), {
            "stage": "vae", "step": step, "steps": steps, "batch_size": batch,
            "base_lr": base_lr, "config_name": config, "model_config": config_to_dict(cfg),
            "model": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
            "optimizer": opt.state_dict(),
            "rng": rewind[1] if rewind else _rng_state(d),
            "sampler": rewind[0] if rewind else sampler.state(),
            "elapsed_s": elapsed0 + time.time() - t0, "data": data_meta,
            "hardware": hardware(d), "seed": opts.seed, "finished": final, **extra})

    t0 = time.time()
    bar = _progress(steps, step, "vae", d.main and opts.progress)
    every = _log_every(steps)
    start_step = step
    if saved and step >= steps:
        _say(d, f"vae: the run is at step {step} (--steps {steps}): nothing to train; raise "
                "--steps to go on")
    with _Interruptible(d, opts, "vae", steps, sampler, bar, save,
                        lambda: step) as guard:
        while step < steps:
            guard.begin()
            lr = vae_lr(base_lr, step, steps)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = sampler.shard(sampler.next(), d.rank, d.world).to(d.device)
            x = data.frames[idx, : cfg.n_frames]
            out = model(x)
            losses = vae_losses(out, x, data.pitch[idx] - lo, data.family[idx],
                                data.instrument[idx], step / steps, cfg)
            _check_finite(losses["total"], "vae", step, opts.out)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            step += 1
            guard.end()
            bar.update(1)
            if step % every == 0 or step == steps:
                vals = {k: round(float(v.detach()), 6) for k, v in losses.items()}
                bar.set_postfix(total=f"{vals['total']:.4f}", recon=f"{vals['recon']:.4f}",
                                refresh=False)
                log.write({"stage": "vae", "step": step, "lr": lr,
                           "time_s": round(elapsed0 + time.time() - t0, 3), **vals})
            if step % opts.ckpt_every == 0 and step < steps:
                save(final=False)
    bar.close()
    vae.eval()
    if d.main and not (saved and saved.get("finished") and start_step >= steps):
        save(final=True)
    d.barrier()
    if d.main:
        final = load_training_state(_state_path(opts.out, "vae"), required=STATE_KEYS)
        data_meta["training_points"] = final.get("training_points", [])
        data_meta["training"] = {"vae_steps": step, "vae_time_s": final["elapsed_s"],
                                 "vae_hardware": final.get("hardware", {})}
    return VAEResult(vae=vae, data_meta=data_meta, config_name=config)


@torch.no_grad()
def encode_all(vae: TimbreVAE, frames: torch.Tensor, batch: int = 256
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE means and log-variances of all notes: frames [N, T, D] -> ([N, 2], [N, 2])."""
    was = vae.training
    vae.eval()
    mus, lvs = [], []
    for i in range(0, frames.shape[0], batch):
        mu, lv, _ = vae.encode(frames[i:i + batch])
        mus.append(mu)
        lvs.append(lv)
    vae.train(was)
    return torch.cat(mus), torch.cat(lvs)


def training_points(vae: TimbreVAE, data: TrainData, device: torch.device
                    ) -> list[dict[str, Any]]:
    """Each training instrument's mean latent point (mean of its notes' VAE means)."""
    from pgesam_live.model.data import instrument_points  # noqa: PLC0415

    mu, _ = encode_all(vae, data.frames)
    xy, counts = instrument_points(mu, data.instrument, len(data.instrument_names))
    present = counts > 0
    xy = xy[present]
    keep = present.nonzero().flatten().tolist()
    return make_training_points(xy, [data.instrument_family[i] for i in keep],
                                [data.instrument_names[i] for i in keep])


# --- stage 2: the Transformer -------------------------------------------------------------------

def _load_vae_for_transformer(opts: TrainOptions) -> VAEResult:
    path = opts.vae or opts.init or _state_path(opts.out, "vae")
    for flag, given in (("--init", opts.init), ("--vae", opts.vae)):
        if given is not None and not Path(given).is_file():
            raise CheckpointError(f"{flag} {given}: no such file; give a model file "
                                  "(pgesam_*.pt) or a run's vae.pt")
    if opts.init is not None and opts.vae is not None:
        return _vae_to_move_to(Path(opts.init), Path(opts.vae))
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no VAE to condition on; train one first "
                              f"(`pgesam-live train vae --data DIR --out {opts.out}`) or pass "
                              f"--vae CKPT")
    if opts.init is not None or Path(path).name.startswith("pgesam_"):
        # a model file: reuse its VAE and meta
        obj, _ = read_model_payload(Path(path))
        vae = build_vae(obj["vae_config"], obj["vae_state"], path)
        meta = {"codec": obj["codec"], "normalisation": obj["normalisation"],
                "pitch_range": list(obj["pitch_range"]),
                "instrument_names": obj["instrument_names"],
                "training_points": obj["training_points"], "training": obj["training"],
                "data_dir": obj["training"].get("data_dir", "")}
        return VAEResult(vae=vae, data_meta=meta, config_name=str(obj["config_name"]))
    st = load_training_state(Path(path), required=STATE_KEYS)
    if st["stage"] != "vae":
        raise CheckpointError(f"{path}: a {st['stage']} state, not a VAE; pass the run's vae.pt")
    if not st.get("finished"):
        print(f"pgesam-live: note: {path} is an unfinished VAE (step {st['step']} of "
              f"{st['steps']})", file=sys.stderr)
    vae = build_vae(st["model_config"], st["model"], path)
    meta = dict(st["data"])
    meta["training_points"] = st.get("training_points", [])
    meta["training"] = {"vae_steps": int(st["step"]), "vae_time_s": float(st["elapsed_s"]),
                        "vae_hardware": st.get("hardware", {})}
    return VAEResult(vae=vae, data_meta=meta, config_name=str(st["config_name"]))


def _vae_to_move_to(init: Path, vae_path: Path) -> VAEResult:
    """--init MODEL --vae OTHER: OTHER's VAE (a run's vae.pt or a model file) and map, MODEL's
    meta; the decoder is moved from MODEL's map to OTHER's (remap.move_decoder_to_map)."""
    obj, _ = read_model_payload(init)
    old = build_vae(obj["vae_config"], obj["vae_state"], init)
    if vae_path.name.startswith("pgesam_"):
        other, _ = read_model_payload(vae_path)
        vae = build_vae(other["vae_config"], other["vae_state"], vae_path)
        data = {"codec": other["codec"], "normalisation": other["normalisation"],
                "pitch_range": other["pitch_range"]}
        points = list(other["training_points"])
        vae_training = {k: v for k, v in dict(other["training"]).items() if k.startswith("vae_")}
    else:
        st = load_training_state(vae_path, required=STATE_KEYS)
        if st["stage"] != "vae":
            raise CheckpointError(f"--vae {vae_path}: a {st['stage']} state, not a VAE; pass "
                                  "the run's vae.pt")
        if not st.get("finished"):
            raise CheckpointError(f"--vae {vae_path}: an unfinished VAE (step {st['step']} of "
                                  f"{st['steps']}); finish it with `train vae --resume` first")
        vae = build_vae(st["model_config"], st["model"], vae_path)
        data = dict(st["data"])
        points = list(st.get("training_points") or [])
        vae_training = {"vae_steps": int(st["step"]), "vae_time_s": float(st["elapsed_s"]),
                        "vae_hardware": st.get("hardware", {})}
    for key, what in (("codec", "codec"), ("normalisation", "frame normalisation"),
                      ("pitch_range", "pitch range")):
        if data.get(key) != obj[key]:  # plain values, as pack_model compares them
            raise ConfigError(f"--vae {vae_path} was trained with another {what} than --init "
                              f"{init} ({data.get(key)} against {obj[key]}); train the VAE on "
                              "the model's data set and codec")
    names = set(obj["instrument_names"])
    points = [p for p in points if p["name"] in names]
    if not points:
        raise ConfigError(f"--vae {vae_path} has none of {init}'s instruments on its map; "
                          "train the VAE on the model's data set")
    meta = {"codec": obj["codec"], "normalisation": obj["normalisation"],
            "pitch_range": list(obj["pitch_range"]), "instrument_names": obj["instrument_names"],
            "training_points": points, "training": {**obj["training"], **vae_training},
            "data_dir": obj["training"].get("data_dir", "")}
    return VAEResult(vae=vae, data_meta=meta, config_name=str(obj["config_name"]),
                     moved_from=old)


def train_transformer(opts: TrainOptions, d: Dist, vae_res: VAEResult | None = None) -> Path | None:
    """Stage 2; returns the model file's path on rank 0 (None on the others)."""
    saved = _start_state(opts, "transformer")
    if saved and opts.init is None and opts.vae is None:  # resuming: the run's own files
        opts = dataclasses.replace(
            opts, init=Path(str(saved["init"])) if saved.get("init") else None,
            vae=Path(str(saved["vae"])) if saved.get("vae") else None)
    if vae_res is None:
        vae_res = _load_vae_for_transformer(opts)
    vae = vae_res.vae.to(d.device).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    meta = vae_res.data_meta
    codec_name = str(meta["codec"]["name"])
    if codec_name != opts.codec and opts.stage == "transformer":
        _say(d, f"using the VAE's codec {codec_name!r} (not --codec {opts.codec})")
    pitch_range = (int(meta["pitch_range"][0]), int(meta["pitch_range"][1]))
    config = vae_res.config_name
    previous_steps = int(saved.get("previous_steps", 0)) if saved else 0
    lora_rank = opts.lora_rank or (int(saved.get("lora_rank") or 0) if saved else 0)
    if saved and opts.lora_rank and opts.lora_rank != int(saved.get("lora_rank") or 0):
        raise ConfigError(f"{_state_path(opts.out, 'transformer')} is a run of LoRA rank "
                          f"{int(saved.get('lora_rank') or 0)} (0: full weights); resume it "
                          "without --lora-rank, or start another --out")
    if opts.fine_tune and lora_rank:
        raise ConfigError("--fine-tune of a low-rank (--lora-rank) run is not supported: start "
                          "another run with --init on its model file")
    if opts.fine_tune:
        if not saved or not saved.get("finished"):
            where = (f"it stopped at step {saved['step']} of {saved['steps']}: resume it first"
                     if saved else f"there is no Transformer run in {opts.out}: train one")
            raise ConfigError(f"--fine-tune continues a finished Transformer run; {where}")
        if opts.steps is None:
            raise ConfigError("--fine-tune needs --steps: how many steps this phase runs")
        previous_steps += int(saved["step"])
        saved = {**saved, "step": 0, "finished": False, "finished_at": ""}
    codec = get_codec(codec_name, **dict(meta["codec"].get("config") or {})).to(d.device)
    init_training: dict[str, Any] = {}
    if saved:
        tr = build_transformer(saved["model_config"], saved["model"],
                               _state_path(opts.out, "transformer"))
        init_training = dict(saved.get("init_training") or {})
    elif opts.init is not None:
        init_obj, init_id = read_model_payload(Path(opts.init))
        tr = build_transformer(init_obj["transformer_config"], init_obj["transformer_state"],
                               opts.init)
        init_training = {**dict(init_obj["training"]), "init_model": init_id}
        previous_steps = int(init_training.get("transformer_steps", 0))
    else:
        _, tr_cfg = make_configs(config, codec.dim, 1, pitch_range,
                                 opts.decoder or DEFAULT_DECODER)
        if opts.frames_per_step is not None:
            tr_cfg = dataclasses.replace(tr_cfg, frames_per_step=opts.frames_per_step)
        torch.manual_seed(opts.seed + 1)  # identical initial weights on every rank
        tr = make_transformer(tr_cfg)
    if opts.decoder is not None and opts.decoder != tr.cfg.decoder:
        raise ConfigError(f"--decoder {opts.decoder}: this run's Transformer is "
                          f"{tr.cfg.decoder}; leave --decoder out, or start another --out")
    parallel = bool(tr.cfg.parallel)
    if parallel and (opts.self_feed or opts.input_noise):
        raise ConfigError("--self-feed and --input-noise are for the autoregressive decoder")
    loss_opts = {k: opts.loss_value(k, saved) for k in LOSS_DEFAULTS}
    train_blocks = (opts.train_blocks if opts.train_blocks is not None
                    else int(saved.get("train_blocks") or 0) if saved else 0)
    if opts.blend_power is not None and loss_opts["blend_points"] == 0:
        raise ConfigError("--blend-power shapes the blends of --blend-points: give that too")
    if train_blocks and loss_opts["blend_points"] > 0:
        raise ConfigError("--blend-points trains points between the instruments, which the "
                          "cached trunk of --train-blocks does not hold: leave one out")
    if train_blocks and loss_opts["contrast_weight"] > 0:
        raise ConfigError("--contrast-weight trains the whole decoder; --train-blocks trains "
                          "its top on a cached trunk: leave one out")
    tr, first_trained = _grid_and_blocks(tr, opts, train_blocks, bool(saved), lora_rank, d)
    tr.to(d.device).train()
    data = load_train_data(opts, codec, pitch_range, tr.cfg.n_frames, d.device, d)
    mu, logvar = encode_all(vae, data.frames)
    sigma = torch.exp(0.5 * logvar)
    for opt_name in ("instrument_points", "blend_points", "contrast_weight"):
        if loss_opts[opt_name] > 0 and not parallel:
            raise ConfigError(f"--{opt_name.replace('_', '-')} is for the parallel decoder")
    from pgesam_live.model.data import instrument_means  # noqa: PLC0415

    inst_mu = instrument_means(mu, data.instrument)  # [N, 2]: each note's instrument's point
    map_moved = dict(saved.get("map_moved") or {}) if saved else {}
    if vae_res.moved_from is not None and not saved:
        if not isinstance(tr, ParallelFrameTransformer):
            raise ConfigError("--init with --vae moves the decoder to the new VAE's map: that "
                              "needs the parallel decoder")
        old_mu, _ = encode_all(vae_res.moved_from.to(d.device).eval(), data.frames)
        report = move_decoder_to_map(
            tr, torch.cat([old_mu, instrument_means(old_mu, data.instrument)]),
            torch.cat([mu, inst_mu]), seed=opts.seed)
        map_moved = {**report.as_dict(), "vae": str(opts.vae)}
        _say(d, f"moved the decoder to {opts.vae}'s map: condition error "
                f"{report.condition_error:.4f} (with the grid {report.grid_condition_error}) "
                f"of its variance, {report.points} points, {report.time_s:.0f} s")
    trunk = (_trunk_cache(tr, mu, inst_mu, data.pitch, first_trained)
             if first_trained is not None else None)
    blender = (MapBlender(mu, data.instrument, data.pitch, power=loss_opts["blend_power"])
               if loss_opts["blend_points"] > 0 or loss_opts["contrast_weight"] > 0 else None)
    steps = opts.steps if opts.steps is not None else (
        int(saved["steps"]) if saved else opts.stage_value("transformer", "steps"))
    batch = opts.batch_size or (int(saved["batch_size"]) if saved
                                else opts.stage_value("transformer", "batch"))
    base_lr = opts.lr or (float(saved["base_lr"]) if saved
                          else opts.stage_value("transformer", "lr"))
    input_noise = (opts.input_noise if opts.input_noise is not None
                   else float(saved.get("input_noise", 0.0)) if saved else 0.0)
    self_feed = (opts.self_feed if opts.self_feed is not None
                 else float(saved.get("self_feed", 0.0)) if saved else 0.0)
    feed_passes = (opts.self_feed_passes if opts.self_feed_passes is not None
                   else int(saved.get("self_feed_passes", 2)) if saved else 2)
    if lora_rank:
        params = lora.attach(tr, lora_rank, seed=opts.seed,
                             factors=saved.get("lora_factors") if saved else None)
    elif first_trained is not None:
        params = _top_parameters(tr, first_trained)
    else:
        params = list(tr.parameters())
    grid = getattr(tr, "map_grid", None)
    grid_ids = {id(p) for p in grid.parameters()} if grid is not None else set()
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if id(p) not in grid_ids], "lr_scale": 1.0}]
    if grid_ids:
        groups.append({"params": [p for p in params if id(p) in grid_ids],
                       "lr_scale": MAP_GRID_LR_SCALE})
    opt = torch.optim.AdamW(groups, lr=base_lr, weight_decay=0.01)
    sampler = BatchSampler(data.instrument, batch, opts.seed + 1, 1)
    step, elapsed0 = 0, 0.0
    torch.manual_seed(opts.seed * 1000003 + d.rank * 7919 + 1)
    if saved:
        opt.load_state_dict(saved["optimizer"])
        sampler.load_state(saved["sampler"])
        _set_rng_state(saved["rng"], d, opts.seed, int(saved["step"]))
        step, elapsed0 = int(saved["step"]), float(saved["elapsed_s"])
    model = _wrap_ddp(tr, d)
    log = RunLog(opts.out, d.main)
    if d.main:
        opts.out.mkdir(parents=True, exist_ok=True)
        if step < steps:
            _say(d, f"transformer: {len(data.pitch)} notes, config {config}, "
                    f"{sum(p.numel() for p in tr.parameters())} params, steps {step}->{steps}, "
                    f"batch {batch}, device {d.device} x{d.world}")

    def save(final: bool, rewind: tuple[Any, Any] | None = None) -> None:
        # rewind: (sampler, RNG) states from before a step that was cut short
        if not d.main:
            return
        save_training_state(_state_path(opts.out, "transformer"), {
            "stage": "transformer", "step": step, "steps": steps, "batch_size": batch,
            "base_lr": base_lr, "config_name": config, "input_noise": input_noise,
            "self_feed": self_feed, "self_feed_passes": feed_passes,
            "previous_steps": previous_steps, "init_training": init_training,
            "init": str(opts.init) if opts.init is not None else "",
            "vae": str(opts.vae) if opts.vae is not None else "",
            "lora_rank": lora_rank, "train_blocks": train_blocks,
            "loss_options": loss_opts, "map_moved": map_moved,
            "lora_factors": lora.factors_of(tr) if lora_rank else None,
            "model_config": config_to_dict(tr.cfg),
            "model": lora.merged_state(tr),
            "optimizer": opt.state_dict(),
            "rng": rewind[1] if rewind else _rng_state(d),
            "sampler": rewind[0] if rewind else sampler.state(),
            "elapsed_s": elapsed0 + time.time() - t0, "data": {"pitch_range": list(pitch_range)},
            "hardware": hardware(d), "seed": opts.seed, "finished": final,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds") if final else ""})

    chan_w = channel_weights(codec_name, codec.dim, d.device)
    if codec_name in CHANNEL_WEIGHTS:
        chan_w[0] = loss_opts["pitch_weight"]
    t0 = time.time()
    bar = _progress(steps, step, "transformer", d.main and opts.progress)
    every = _log_every(steps)
    start_step = step
    if saved and step >= steps:
        _say(d, f"transformer: the run is at step {step} (--steps {steps}): nothing to train; "
                "raise --steps (or --fine-tune --steps N) to go on")
    with _Interruptible(d, opts, "transformer", steps, sampler, bar, save,
                        lambda: step) as guard:
        while step < steps:
            guard.begin()
            lr = transformer_lr(base_lr, step, steps)
            for group in opt.param_groups:
                group["lr"] = lr * float(group.get("lr_scale", 1.0))
            idx_cpu = sampler.shard(sampler.next(), d.rank, d.world)
            if trunk is not None:  # the last blocks, on the cached trunk
                loss = _top_loss(tr, trunk, idx_cpu.to(d.device), mu, inst_mu, data, codec,
                                 chan_w, loss_opts, sampler.gen, int(first_trained or 0))
            else:
                noise = torch.randn(idx_cpu.numel(), 2, generator=sampler.gen)
                idx = idx_cpu.to(d.device)
                points = mu[idx] + COND_NOISE * sigma[idx] * noise.to(d.device)
                if loss_opts["instrument_points"] > 0:
                    use = torch.rand(idx.numel(), generator=sampler.gen).to(d.device)
                    use = use < loss_opts["instrument_points"]
                    points = torch.where(use[:, None], inst_mu[idx], points)
                if loss_opts["point_noise"] > 0:
                    points = points + loss_opts["point_noise"] * torch.randn_like(points)
                x = data.frames[idx]
                blended = torch.zeros(idx.numel(), dtype=torch.bool, device=d.device)
                if blender is not None:
                    points, x, blended = blender.apply_masked(
                        points, x, data.frames, data.pitch[idx], loss_opts["blend_points"],
                        sampler.gen)
                x_in = x + input_noise * torch.randn_like(x) if input_noise > 0 else x
                if self_feed > 0:
                    x_in = _self_fed_inputs(tr, points, data.pitch[idx], x_in, self_feed,
                                            feed_passes)
                pred = model(points, data.pitch[idx], x_in)
                if parallel:
                    loss = parallel_loss(pred, x, codec, chan_w, loss_opts)
                    if loss_opts["contrast_weight"] > 0 and blender is not None:
                        # the notes still their own (not blends) that have a rival
                        rival = blender.rival_notes(data.instrument[idx], data.pitch[idx],
                                                    sampler.gen)
                        keep = ~blended & (rival >= 0)
                        loss = loss + loss_opts["contrast_weight"] * contrast_loss(
                            pred, x, data.frames[rival.clamp(min=0)], keep, codec)
                else:
                    loss = (((pred - x) ** 2) * chan_w).mean()
            _check_finite(loss, "transformer", step, opts.out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            step += 1
            guard.end()
            bar.update(1)
            if step % every == 0 or step == steps:
                bar.set_postfix(mse=f"{float(loss.detach()):.5f}", refresh=False)
                log.write({"stage": "transformer", "step": step, "lr": lr,
                           "time_s": round(elapsed0 + time.time() - t0, 3),
                           "mse": round(float(loss.detach()), 7),
                           "grad_norm": round(float(gnorm), 4)})
            if step % opts.ckpt_every == 0 and step < steps:
                save(final=False)
    bar.close()
    tr.eval()
    already = saved and saved.get("finished") and start_step >= steps
    if d.main and not already:
        save(final=True)
    lora.merge(tr)
    d.barrier()
    if not d.main:
        return None
    st = load_training_state(_state_path(opts.out, "transformer"), required=STATE_KEYS)
    training = dict(init_training or meta.get("training") or {})
    training.pop("init_model", None)
    phase_time_s = float(st["elapsed_s"])
    if init_training:  # record this phase beside the ones the init model went through
        training["phases"] = [*list(init_training.get("phases") or [{
            "steps": int(init_training.get("transformer_steps", 0)),
            "time_s": float(init_training.get("transformer_time_s", 0.0)),
            "hardware": init_training.get("transformer_hardware", {})}]), {
            "init": str(init_training.get("init_model", "")), "steps": step,
            "time_s": phase_time_s, "hardware": st.get("hardware", {}), "lr": base_lr,
            "batch_size": batch, "lora_rank": lora_rank, "self_feed": self_feed,
            "self_feed_passes": feed_passes}]
        phase_time_s += float(init_training.get("transformer_time_s", 0.0))
    training.update({
        "transformer_steps": previous_steps + step, "transformer_lora_rank": lora_rank,
        "transformer_train_blocks": train_blocks,
        "transformer_last_phase_steps": step, "transformer_time_s": phase_time_s,
        "transformer_hardware": st.get("hardware", {}), "seed": opts.seed,
        "transformer_input_noise": float(st.get("input_noise", 0.0)),
        "transformer_self_feed": float(st.get("self_feed", 0.0)),
        "transformer_self_feed_passes": int(st.get("self_feed_passes", 2)),
        "transformer_loss_options": dict(st.get("loss_options") or {}),
        "data_dir": str(meta.get("data_dir", opts.data)), "n_notes": int(len(data.pitch)),
        # The stage's own finish time (not now): resuming a finished run rewrites the same file.
        "date": str(st.get("finished_at", "")),
    })
    if map_moved:
        training["map_moved"] = map_moved
        # the map is the new VAE's: its own training, not the init model's VAE's
        training.update({k: v for k, v in dict(meta.get("training") or {}).items()
                         if k.startswith("vae_")})
    grid = getattr(tr, "map_grid", None)
    if trunk is not None and grid is not None and step > 0:
        # A cached run trains the grid exactly at these points; every other entry is still
        # its random start, and a point between instruments would read it as noise.
        training["map_grid_filled_entries"] = grid.fill_unread(
            torch.cat([mu, inst_mu]).cpu())
    names = list(meta["instrument_names"])
    fams = sorted({p["family"] for p in meta.get("training_points", [])})
    model_meta = ModelMeta(
        config_name=config, codec_name=codec_name,
        codec_config=dict(meta["codec"].get("config") or {}),
        normalisation=dict(meta.get("normalisation") or {}), pitch_range=pitch_range,
        instrument_names=names, family_names=_family_names(fams),
        training_points=list(meta.get("training_points") or []), training=training)
    path = save_model(opts.out, vae, tr, model_meta)
    _say(d, f"model file: {path}")
    return path


class MapBlender:
    """Targets for the space between the training instruments (--blend-points).

    A point p drawn uniformly from the instruments' bounding box (widened by BOX_MARGIN of
    its size) plays, at pitch m, the inverse-distance blend (weights (d^2 + EPS^2)^(-q/2), q
    = `power`, 2 by default) of the notes at m of the K instruments nearest to p that have one:
    at an instrument's own point that instrument, halfway between two a morph of both.
    Frames blend in the codec's normalised space (loudness and noise in dB, the harmonic
    shares linearly), where a blend of two envelopes is a level between them, not a sum.
    """

    K = K_NEAREST
    EPS = BLEND_EPS     # map units: within this of an instrument, it dominates the blend
    BOX_MARGIN = 0.05

    def __init__(self, mu: torch.Tensor, instrument: torch.Tensor, pitch: torch.Tensor,
                 power: float = 2.0) -> None:
        """mu [N, 2] the notes' points, instrument [N], pitch [N] (MIDI); power q of the
        inverse-distance weights."""
        from pgesam_live.model.data import instrument_points  # noqa: PLC0415

        self.power = power
        n_inst = int(instrument.max()) + 1
        self.points, counts = instrument_points(mu, instrument, n_inst)  # [I, 2]
        self.has = counts > 0
        lo = self.points[self.has].min(0).values
        hi = self.points[self.has].max(0).values
        span = hi - lo
        self.lo, self.hi = lo - self.BOX_MARGIN * span, hi + self.BOX_MARGIN * span
        self.p_lo = int(pitch.min())
        self.n_pitch = int(pitch.max()) - self.p_lo + 1
        # The notes by (instrument, pitch) cell (several when a set has several velocities):
        # cell c = instrument * n_pitch + pitch - p_lo holds order[starts[c]:starts[c] + n[c]].
        cell = instrument * self.n_pitch + (pitch - self.p_lo)
        self.order = torch.argsort(cell, stable=True)
        self.cell_n = torch.bincount(cell, minlength=n_inst * self.n_pitch)
        self.starts = torch.cumsum(self.cell_n, 0) - self.cell_n

    def blend(self, p: torch.Tensor, pitch: torch.Tensor, frames: torch.Tensor,
              gen: torch.Generator | None = None) -> torch.Tensor:
        """Points p [B, 2], pitches [B] -> blended target frames [B, T, D]. Each neighbour
        gives one of its notes at the pitch: drawn with `gen`, else its first."""
        cells = self._cells(pitch)                                           # [B, I]
        d2 = ((p[:, None, :] - self.points[None]) ** 2).sum(-1)           # [B, I]
        d2 = torch.where(self.cell_n[cells] > 0, d2, torch.full_like(d2, float("inf")))
        _, near, w = nearest_weights(d2, min(self.K, int(self.has.sum())), self.EPS,
                                     self.power)                           # [B, k]
        # (a neighbour without the pitch has weight 0: any note index serves)
        idx = self._note_in(torch.gather(cells, 1, near), gen)          # [B, k]
        return (frames[idx] * w[:, :, None, None]).sum(1)

    def _cells(self, pitch: torch.Tensor) -> torch.Tensor:
        """Pitches [B] -> every instrument's (instrument, pitch) cell at them [B, I]."""
        return torch.arange(len(self.points), device=pitch.device)[None] * self.n_pitch \
            + (pitch - self.p_lo)[:, None]

    def _note_in(self, c: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Cells c (any shape) -> the index of one note in each (one of its velocities: drawn
        with `gen`, else its first; an empty cell gives some note)."""
        u = (torch.rand(c.shape, generator=gen).to(c.device) if gen is not None
             else torch.zeros(c.shape, device=c.device))
        n = self.cell_n[c]
        within = torch.minimum((u * n).long(), (n - 1).clamp(min=0))
        return self.order[(self.starts[c] + within).clamp(max=len(self.order) - 1)]

    def apply(self, points: torch.Tensor, x: torch.Tensor, frames: torch.Tensor,
              pitch: torch.Tensor, share: float, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace a share of a batch (points [B, 2], targets x [B, T, D] at pitch [B]) by
        blends at random points of the box; new tensors."""
        return self.apply_masked(points, x, frames, pitch, share, gen)[:2]

    def apply_masked(self, points: torch.Tensor, x: torch.Tensor, frames: torch.Tensor,
                     pitch: torch.Tensor, share: float, gen: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `apply`, with which rows were replaced: (points, x, blended bool [B])."""
        use = (torch.rand(len(points), generator=gen) < share).to(points.device)
        if not bool(use.any()):
            return points, x, use
        u = torch.rand(int(use.sum()), 2, generator=gen).to(points.device)
        p = self.lo + u * (self.hi - self.lo)
        points, x = points.clone(), x.clone()
        points[use] = p
        x[use] = self.blend(p, pitch[use], frames, gen)
        return points, x, use

    def rival_notes(self, instrument: torch.Tensor, pitch: torch.Tensor,
                    gen: torch.Generator | None = None) -> torch.Tensor:
        """For notes of `instrument` [B] at `pitch` [B]: the index of a note at the same pitch
        of the instrument nearest on the map that is not theirs (one of its velocities, drawn
        with `gen`, else its first), -1 where no other instrument has the pitch. [B] long."""
        d2 = ((self.points[instrument][:, None, :] - self.points[None]) ** 2).sum(-1)  # [B, I]
        cells = self._cells(pitch)
        mine = torch.arange(len(self.points), device=pitch.device)[None] == instrument[:, None]
        d2 = torch.where((self.cell_n[cells] > 0) & ~mine, d2, torch.full_like(d2, float("inf")))
        best_d2, best = d2.min(1)
        idx = self._note_in(cells.gather(1, best[:, None])[:, 0], gen)
        return torch.where(torch.isfinite(best_d2), idx, torch.full_like(idx, -1))


# The map grid's tables and projection learn at this multiple of the decoder's learning rate
# (Instant-NGP trains its grids at 1e-2; a grid starts from nothing where the decoder is
# trained).
MAP_GRID_LR_SCALE = 20.0


def parallel_loss(pred: torch.Tensor, x: torch.Tensor, codec: Codec, chan_w: torch.Tensor,
                  loss_opts: dict[str, float]) -> torch.Tensor:
    """The parallel decoder's training loss of predicted frames [B, T, D] against the truth:
    the audible frame loss plus the weighted spectral and log-distribution terms."""
    loss = audible_frame_loss(pred, x, codec, chan_w, loss_opts["delta_weight"],
                              loss_opts["loudness_weight"])
    if loss_opts["spectral_weight"] > 0:
        loss = loss + loss_opts["spectral_weight"] * decoded_spectral_loss(pred, x, codec)
    if loss_opts["log_dist_weight"] > 0:
        loss = loss + loss_opts["log_dist_weight"] * log_distribution_loss(pred, x, codec)
    if loss_opts["release_weight"] > 0:
        loss = loss + loss_opts["release_weight"] * release_loudness_loss(pred, x, codec)
    return loss


def _grid_and_blocks(tr: Decoder, opts: TrainOptions, train_blocks: int, resumed: bool,
                     lora_rank: int, d: Dist) -> tuple[Decoder, int | None]:
    """Apply --map-grid and --train-blocks to the run's decoder: (the decoder, grown a map
    grid if asked; the first block that trains, None when every weight trains)."""
    if opts.map_grid_from_block is not None:
        tr = _grid_from_block(tr, opts, train_blocks, resumed)
    if not opts.map_grid and not train_blocks:
        return tr, None
    if not isinstance(tr, ParallelFrameTransformer):
        raise ConfigError("--map-grid and --train-blocks are for the parallel decoder "
                          "(--decoder parallel)")
    n = len(tr.blocks)
    if train_blocks and not 1 <= train_blocks <= n:
        raise ConfigError(f"--train-blocks {train_blocks}: this decoder has {n} blocks")
    first = n - train_blocks if train_blocks else None
    if opts.map_grid:
        if lora_rank:
            raise ConfigError("--map-grid does not go with --lora-rank: train the grid with "
                              "the full weights or --train-blocks")
        if tr.map_grid is None:
            if resumed:
                raise ConfigError(f"--map-grid: {opts.out}'s decoder has no map grid; start "
                                  "another --out with --init")
            from_block = (opts.map_grid_from_block if opts.map_grid_from_block is not None
                          else first or 0)
            tr = grow_map_grid(tr, opts.map_grid, from_block)
        elif tuple(tr.cfg.map_grid) != tuple(opts.map_grid):
            raise ConfigError(f"--map-grid {','.join(map(str, opts.map_grid))}: this decoder's "
                              f"grid is {','.join(map(str, tr.cfg.map_grid))}; leave "
                              "--map-grid out")
    if first is not None:
        if opts.point_noise:
            raise ConfigError("--train-blocks caches the frozen blocks at noise-free points: "
                              "leave out --point-noise")
        if d.world > 1:
            raise ConfigError("--train-blocks runs in one process: leave out torchrun")
        if tr.map_grid is not None and tr.cfg.map_grid_from_block < first:
            raise ConfigError(f"block {tr.cfg.map_grid_from_block} reads the map grid but "
                              f"--train-blocks {train_blocks} freezes it: train at least "
                              f"{n - tr.cfg.map_grid_from_block} blocks")
    return tr, first


def _grid_from_block(tr: Decoder, opts: TrainOptions, train_blocks: int, resumed: bool
                     ) -> Decoder:
    """--map-grid-from-block K: the decoder with its map grid read from block K on (same
    weights, its config changed); a decoder without one is returned as it is, for
    _grid_and_blocks to grow the grid of --map-grid there."""
    k = int(opts.map_grid_from_block or 0)
    if not isinstance(tr, ParallelFrameTransformer):
        raise ConfigError("--map-grid-from-block is for the parallel decoder")
    if train_blocks:
        raise ConfigError("--map-grid-from-block changes what the first blocks read: train "
                          "the whole decoder (leave out --train-blocks)")
    if not 0 <= k < len(tr.blocks):
        raise ConfigError(f"--map-grid-from-block {k}: this decoder's blocks are "
                          f"0..{len(tr.blocks) - 1}")
    if tr.map_grid is None:
        if not opts.map_grid:
            raise ConfigError("--map-grid-from-block: this decoder has no map grid; grow one "
                              "with --map-grid SIDES")
        return tr  # _grid_and_blocks grows it, read from block k
    if tr.cfg.map_grid_from_block == k:
        return tr
    if resumed:
        raise ConfigError(f"--map-grid-from-block {k}: {opts.out}'s decoder reads its grid "
                          f"from block {tr.cfg.map_grid_from_block}; leave the option out")
    moved = ParallelFrameTransformer(dataclasses.replace(tr.cfg, map_grid_from_block=k))
    moved.load_state_dict(tr.state_dict())
    return moved.to(device=tr.pos.device, dtype=tr.pos.dtype).train(tr.training)


def _top_parameters(tr: Decoder, first: int) -> list[nn.Parameter]:
    """Freeze all but what --train-blocks trains (blocks first.., the output layer, the map
    grid); returns those parameters."""
    assert isinstance(tr, ParallelFrameTransformer)
    mods: list[nn.Module] = [*tr.blocks[first:], tr.mod_out, tr.out_proj]
    mods += [m for m in (tr.out_bias, tr.map_grid) if m is not None]
    for p in tr.parameters():
        p.requires_grad_(False)
    params = [p for m in mods for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


@dataclass
class TrunkCache:
    """The frozen blocks' output per training note [N, S, d] and its condition without the
    map grid [N, d], at the note's own point and at its instrument's point."""

    h_own: torch.Tensor
    c_own: torch.Tensor
    h_inst: torch.Tensor
    c_inst: torch.Tensor


def _trunk_cache(tr: Decoder, mu: torch.Tensor, inst_mu: torch.Tensor, pitch: torch.Tensor,
                 first: int, batch: int = 32) -> TrunkCache:
    assert isinstance(tr, ParallelFrameTransformer)
    was = tr.training
    tr.eval()
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, len(pitch), batch):
        for k, pts in enumerate((mu, inst_mu)):
            h, c = tr.trunk(pts[i:i + batch], pitch[i:i + batch], first)
            parts[2 * k].append(h)
            parts[2 * k + 1].append(c)
    tr.train(was)
    return TrunkCache(*(torch.cat(p) for p in parts))


def _top_loss(tr: Decoder, trunk: TrunkCache, idx: torch.Tensor, mu: torch.Tensor,
              inst_mu: torch.Tensor, data: TrainData, codec: Codec, chan_w: torch.Tensor,
              loss_opts: dict[str, float], gen: torch.Generator, first: int) -> torch.Tensor:
    """One --train-blocks step's loss: notes idx [B] from the cached trunk, a share
    loss_opts['instrument_points'] of them at their instrument's point."""
    assert isinstance(tr, ParallelFrameTransformer)
    use = (torch.rand(idx.numel(), generator=gen) < loss_opts["instrument_points"]).to(idx.device)
    h = torch.where(use[:, None, None], trunk.h_inst[idx], trunk.h_own[idx])
    c = torch.where(use[:, None], trunk.c_inst[idx], trunk.c_own[idx])
    pts = torch.where(use[:, None], inst_mu[idx], mu[idx])
    x = data.frames[idx]
    pred = tr.top(h, c, pts, data.pitch[idx], first)[:, :x.shape[1]]
    return parallel_loss(pred, x, codec, chan_w, loss_opts)


# Floors of the audible-frame loss (harmonic codec): below them a level is inaudible, so a
# prediction anywhere below the floor is as good as the truth there (the codec's scales reach
# -140 / -160 dB, where plain MSE spends most of its effort on silence).
LOUD_FLOOR_DB = -90.0
NOISE_FLOOR_DB = -100.0
# Loss weights per channel group of the audible loss: the harmonic distribution (values that
# sum to 1, mostly small) carries the timbre, the loudness the envelope.
AUDIBLE_WEIGHTS = {"loudness": 10.0, "distribution": 10.0, "noise": 1.0}


def audible_frame_loss(pred: torch.Tensor, target: torch.Tensor, codec: Codec,
                       chan_w: torch.Tensor, delta_weight: float = 1.0,
                       loudness_weight: float | None = None) -> torch.Tensor:
    """Loss of predicted frames [B, T, D] against the truth, weighted to what is audible.

    Harmonic codec: loudness and noise bands floored (below the floor only overshoot
    counts), pitch and harmonic distribution counted only where the harmonics are audible,
    plus `delta_weight` x the same on frame-to-frame differences (a decoder that jitters
    between frames buzzes at the frame rate even when each frame is close on average).
    `loudness_weight` (None: AUDIBLE_WEIGHTS') weighs the loudness channel, whose scale is
    140 dB: at 10 a 3 dB error costs 0.005 where the harmonic distribution's typical error
    costs 0.4.
    Other codecs: channel-weighted MSE plus the difference term.
    """
    if not isinstance(codec, HarmonicCodec):
        err = (pred - target) ** 2 * chan_w
        d_err = (pred.diff(dim=1) - target.diff(dim=1)) ** 2 * chan_w
        return err.mean() + delta_weight * d_err.mean()
    k = codec.n_harmonics
    nb = codec.n_noise_bands
    loud_floor = (LOUD_FLOOR_DB + codec.LOUD_OFFSET_DB) / codec.LOUD_SCALE_DB
    noise_floor = (NOISE_FLOOR_DB + codec.NOISE_OFFSET_DB) / codec.NOISE_SCALE_DB
    t_loud, p_loud = target[..., 1], pred[..., 1]
    audible = (t_loud > loud_floor).to(pred.dtype)  # [B, T]
    t_noise, p_noise = target[..., 2 + k:2 + k + nb], pred[..., 2 + k:2 + k + nb]

    def floored(p: torch.Tensor, t: torch.Tensor, floor: float) -> torch.Tensor:
        return torch.where(t > floor, p - t, F.relu(p - floor))

    def group_losses(p_pitch: torch.Tensor, p_l: torch.Tensor, p_dist: torch.Tensor,
                     p_n: torch.Tensor, t_pitch: torch.Tensor, t_l: torch.Tensor,
                     t_dist: torch.Tensor, t_n: torch.Tensor, aud: torch.Tensor
                     ) -> torch.Tensor:
        e_pitch = ((p_pitch - t_pitch) ** 2 * aud).mean() * float(chan_w[0])
        e_loud = (floored(p_l, t_l, loud_floor) ** 2).mean()
        e_dist = (((p_dist - t_dist) ** 2).mean(-1) * aud).mean() * k
        e_noise = (floored(p_n, t_n, noise_floor) ** 2).mean()
        w = AUDIBLE_WEIGHTS
        w_loud = w["loudness"] if loudness_weight is None else loudness_weight
        return (e_pitch + w_loud * e_loud + w["distribution"] * e_dist
                + w["noise"] * e_noise)

    loss = group_losses(pred[..., 0], p_loud, pred[..., 2:2 + k], p_noise,
                        target[..., 0], t_loud, target[..., 2:2 + k], t_noise, audible)
    if delta_weight > 0:
        # Differences of the floored values: the jitter that is heard.
        aud2 = audible[:, 1:] * audible[:, :-1]
        loss = loss + delta_weight * group_losses(
            pred[..., 0].diff(dim=1), p_loud.clamp(min=loud_floor).diff(dim=1),
            pred[..., 2:2 + k].diff(dim=1), p_noise.clamp(min=noise_floor).diff(dim=1),
            target[..., 0].diff(dim=1), t_loud.clamp(min=loud_floor).diff(dim=1),
            target[..., 2:2 + k].diff(dim=1), t_noise.clamp(min=noise_floor).diff(dim=1), aud2)
    if codec.dim > 2 + k + nb:
        # Channels beyond the harmonic layout (the partials codec's stretch and free
        # partials): channel-weighted MSE, and the same on frame differences.
        w_x = chan_w[2 + k + nb:]
        p_x, t_x = pred[..., 2 + k + nb:], target[..., 2 + k + nb:]
        loss = loss + ((p_x - t_x) ** 2 * w_x).mean()
        if delta_weight > 0:
            loss = loss + delta_weight * ((p_x.diff(dim=1) - t_x.diff(dim=1)) ** 2 * w_x).mean()
    return loss


# release_loudness_loss: the window after the training notes' note-off (NOTE_HOLD_S) that it
# weighs; the held-note bench compares releases over their first 300 ms.
RELEASE_WINDOW_S = 0.4


def release_loudness_loss(pred: torch.Tensor, target: torch.Tensor, codec: Codec
                          ) -> torch.Tensor:
    """The loudness error over the release: frames [B, T, D] of the harmonic codec.

    The mean squared loudness error (normalised units, floored as audible_frame_loss floors
    it) over the RELEASE_WINDOW_S after the data set's note-off at NOTE_HOLD_S. A release is
    a tenth of a note's frames, so in the whole-note mean a release blurred over 300 ms costs
    little while a performer hears it on every key let go. 0 for other codecs, or for notes
    shorter than the note-off."""
    if not isinstance(codec, HarmonicCodec):
        return pred.new_zeros(())
    start = codec.frames_for(NOTE_HOLD_S)
    stop = min(target.shape[1], start + codec.frames_for(RELEASE_WINDOW_S))
    if stop <= start:
        return pred.new_zeros(())
    loud_floor = (LOUD_FLOOR_DB + codec.LOUD_OFFSET_DB) / codec.LOUD_SCALE_DB
    p, t = pred[:, start:stop, 1], target[:, start:stop, 1]
    err = torch.where(t > loud_floor, p - t, F.relu(p - loud_floor))
    return (err ** 2).mean()


LOG_DIST_FLOOR_DB = -60.0  # log_distribution_loss: harmonic shares floored here (re total)


def _share_db(pred: torch.Tensor, target: torch.Tensor, codec: HarmonicCodec
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The harmonic shares of predicted and true frames [B, T, D] in dB, floored near
    LOG_DIST_FLOOR_DB, and where they count (harmonics below Nyquist in the target's audible
    frames): (db_p, db_t, w), each [B, T, K]. The predicted share goes through a sharp
    softplus so that a harmonic predicted below zero still has a gradient."""
    k = codec.n_harmonics
    floor = 10.0 ** (LOG_DIST_FLOOR_DB / 20.0)
    loud_floor = (LOUD_FLOOR_DB + codec.LOUD_OFFSET_DB) / codec.LOUD_SCALE_DB
    audible = (target[..., 1] > loud_floor).to(pred.dtype)  # [B, T]
    midi = target[..., 0] * codec.PITCH_SCALE_MIDI + codec.PITCH_OFFSET_MIDI
    f0_hz = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    n = torch.arange(1, k + 1, device=pred.device, dtype=pred.dtype)
    below = (f0_hz[..., None] * n < codec.sample_rate / 2 * 0.98).to(pred.dtype)  # [B, T, K]
    share_p = F.softplus(pred[..., 2:2 + k], beta=1.0 / floor)
    share_t = target[..., 2:2 + k].clamp(min=0.0)
    db_p = 20.0 * torch.log10(share_p + floor)
    db_t = 20.0 * torch.log10(share_t + floor)
    return db_p, db_t, below * audible[..., None]


def contrast_loss(pred: torch.Tensor, own: torch.Tensor, rival: torch.Tensor,
                  keep: torch.Tensor, codec: Codec) -> torch.Tensor:
    """How much nearer each predicted note [B, T, D] is to a rival note (the nearest other
    instrument's at its pitch, `MapBlender.rival_notes`) than to its own target: the mean over
    the notes `keep` [B] bool of max(0, d(pred, own) - d(pred, rival)), d the mean squared
    difference of the harmonic shares in dB (divided by the floor's depth) where the own
    note's harmonics are audible, as log_distribution_loss weighs them. Where the note is
    nearer its own it is 0; where not, its gradient points from the rival's spectrum to the
    own one: the detail that names an instrument among its neighbours, which a loss on the
    own target alone averages away at a crowded point. 0 for other codecs."""
    if not isinstance(codec, HarmonicCodec) or not bool(keep.any()):
        return pred.new_zeros(())
    db_p, db_t, w = _share_db(pred, own, codec)
    _, db_r, _ = _share_db(pred, rival, codec)
    depth = -LOG_DIST_FLOOR_DB
    norm = w.sum((1, 2)).clamp(min=1.0)
    d_own = (((db_p - db_t) / depth) ** 2 * w).sum((1, 2)) / norm     # [B]
    d_rival = (((db_p - db_r) / depth) ** 2 * w).sum((1, 2)) / norm
    gap = F.relu(d_own - d_rival) * keep.to(pred.dtype)
    return gap.sum() / keep.sum().clamp(min=1)


def log_distribution_loss(pred: torch.Tensor, target: torch.Tensor, codec: Codec
                          ) -> torch.Tensor:
    """The harmonic distribution's error in dB: frames [B, T, D] of the harmonic codec.

    The audible loss weighs each harmonic's share of the amplitude linearly, so a harmonic at
    -40 dB re the total costs next to nothing however wrong it is, while what is heard (and
    what identity_nn's log-band spectrogram measures) is its level. This is the mean squared
    difference of 20 log10(share), floored near LOG_DIST_FLOOR_DB and divided by its depth,
    over the frames where the harmonics are audible and the harmonics below Nyquist. The
    predicted share goes through a sharp softplus so that a harmonic predicted below zero
    still has a gradient. 0 for other codecs."""
    if not isinstance(codec, HarmonicCodec):
        return pred.new_zeros(())
    db_p, db_t, w = _share_db(pred, target, codec)
    err = ((db_p - db_t) / -LOG_DIST_FLOOR_DB) ** 2 * w
    return err.sum() / w.sum().clamp(min=1.0)


SPECTRAL_FFT_SIZES = (256, 1024)
SPECTRAL_CROP_FRAMES = 64  # a random window of this many frames per note is synthesised


def decoded_spectral_loss(pred: torch.Tensor, target: torch.Tensor, codec: Codec,
                          crop_frames: int = SPECTRAL_CROP_FRAMES) -> torch.Tensor:
    """Multi-resolution log-magnitude STFT distance between the harmonic parts of predicted
    and true frames [B, T, D], synthesised by the (differentiable) harmonic codec over one
    random window of `crop_frames` per batch: the spectral detail as it is heard, which a
    frame MSE weighs poorly (a 1 % error in a loud partial against one in an inaudible one).
    0 for a codec without a differentiable synthesiser of that form."""
    if not isinstance(codec, HarmonicCodec):
        return pred.new_zeros(())
    t = pred.shape[1]
    n = min(crop_frames, t)
    start = int(torch.randint(0, t - n + 1, (1,)))
    waves = []
    for frames in (pred[:, start:start + n], target[:, start:start + n]):
        waves.append(codec.decode_deterministic(frames))
    total = pred.new_zeros(())
    for n_fft in SPECTRAL_FFT_SIZES:
        win = torch.hann_window(n_fft, device=pred.device, dtype=pred.dtype)
        mags = [torch.stft(w, n_fft, hop_length=n_fft // 4, window=win, center=True,
                           pad_mode="constant", return_complex=True).abs() / win.sum()
                for w in waves]
        total = total + (torch.log(mags[0] + 1e-5) - torch.log(mags[1] + 1e-5)).abs().mean()
    return total / len(SPECTRAL_FFT_SIZES)


def _self_fed_inputs(tr: Decoder, points: torch.Tensor, pitches: torch.Tensor,
                     x: torch.Tensor, p: float, passes: int) -> torch.Tensor:
    """Decoder inputs for parallel scheduled sampling (Duckworth et al. 2019): x [B, T, D]
    with each frame group replaced, with probability p, by the model's own prediction.

    Pass k feeds the mix of pass k-1 back in, so after `passes` passes a replaced group carries
    up to `passes` steps of the model's own error, as in free-running generation; no gradient
    flows through these passes. `pred[:, t]` predicts frame t, so it is the frame the model
    itself would have put there; forward() shifts it right by one group as it does the truth.
    """
    g = tr.cfg.frames_per_step
    b, t, _ = x.shape
    groups = math.ceil(t / g)
    mask = (torch.rand(b, groups, 1, device=x.device) < p).repeat_interleave(g, dim=1)[:, :t]
    mixed = x
    with torch.no_grad():
        for _ in range(passes):
            mixed = torch.where(mask, tr(points, pitches, mixed), x)
    return mixed.detach()


def _family_names(present: list[str]) -> list[str]:
    from pgesam_live.model.data import FAMILIES
    return list(FAMILIES) if all(f in FAMILIES for f in present) else present


def _codec_config(codec: Codec) -> dict[str, Any]:
    """Constructor arguments that rebuild the codec: its __init__ parameters read back from
    the attributes of the same name (never a machine-specific weights path)."""
    try:
        params = inspect.signature(type(codec).__init__).parameters
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for name in params:
        if name in ("self", "weights"):
            continue
        v = getattr(codec, name, None)
        if isinstance(v, (bool, int, float, str)):
            out[name] = v
    return out


def _say(d: Dist, msg: str) -> None:
    if d.main:
        print(f"pgesam-live train: {msg}", file=sys.stderr, flush=True)


# --- entry point --------------------------------------------------------------------------------

def run_train(ns: argparse.Namespace) -> int:
    """`pgesam-live train vae|transformer|all ...` (also under torchrun)."""
    opts = TrainOptions.from_namespace(ns)
    d = setup_dist(opts.device)
    try:
        vae_res = None
        if opts.stage in ("vae", "all"):
            vae_res = train_vae(opts, d)
        if opts.stage in ("transformer", "all"):
            train_transformer(opts, d, vae_res)
    finally:
        d.close()
    return 0


__all__ = ["BatchSampler", "TrainOptions", "build_models", "encode_all", "make_configs",
           "parse_pitch_range", "run_train", "train_transformer", "train_vae",
           "training_points", "transformer_lr", "vae_lr"]
