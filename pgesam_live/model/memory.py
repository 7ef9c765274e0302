"""A spectral memory of the training instruments, read at render time.

The decoder regresses toward the mean of a crowded map: even at a training instrument's own
point its harmonic spectrum is smoother than the instrument's (the model card's oracle
probe: the harmonic shares are where a note loses its instrument). The memory holds, for
each training instrument and pitch, how far the decoder's note-long harmonic profile at that
instrument's point lies from the instrument's own (log share per harmonic: the residual). A
note at a point p and pitch m gets the inverse-distance blend of the residuals of the K
instruments nearest to p that have that pitch (the weights of `MapBlender`), as a gain per
harmonic on every frame: at an instrument's own point its own spectrum, between instruments
a blend of their corrections, far from all of them the nearest ones' (their weights even
out), or, with a `reach`, nothing: the decoder alone. The decoder's dynamics (how the
spectrum changes over the note, its envelope, pitch and noise) are untouched. A pure
function of (point, pitch): a streamed head, the rest of its note and a note following a
moving point (points per frame) get the same gains.

Built by `pgesam-live memory` (model/memory_build.py) from the training split the model was
trained on; stored in the model file (`spectral_memory`), about 0.5 MB for 160 instruments
x 25 pitches.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from pgesam_live.errors import CheckpointError

K_NEAREST = 3
EPS = 0.003          # map units: within this of an instrument, it dominates the blend
MAX_GAIN_DB = 60.0   # no harmonic moved further than this
FRAMES_WITHIN_DB = 30.0  # a note's profile: its frames within this of its loudest
FLOOR_DB = 60.0      # a profile's harmonics count down to this below its strongest
LOG_FLOOR = 1e-6     # shares below this count as this (-120 dB)


def nearest_weights(d2: torch.Tensor, k: int, eps: float, power: float = 2.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared distances d2 [..., I] (inf: not a candidate) -> the k nearest (near_d2,
    near [..., k], nearest first) and their inverse-distance weights w [..., k], (d^2 +
    eps^2)^(-power/2) normalised in log space (any power, no underflow); all zero where no
    candidate is finite. The map's blends (train.py's MapBlender) and the memory's."""
    k = min(k, d2.shape[-1])
    near_d2, near = torch.topk(d2, k, dim=-1, largest=False)
    finite = torch.isfinite(near_d2)
    logw = -(power / 2) * torch.log(near_d2.clamp(max=1e30) + eps ** 2)
    logw = torch.where(finite, logw, torch.full_like(logw, -torch.inf))
    any_ok = finite[..., :1]
    w = torch.softmax(torch.where(any_ok, logw, torch.zeros_like(logw)), dim=-1)
    return near_d2, near, torch.where(any_ok, w, torch.zeros_like(w))


def static_log_profile(frames: torch.Tensor, loud_scale_db: float, loud_offset_db: float,
                       n_harmonics: int) -> torch.Tensor:
    """A note's harmonic profile: frames [B, T, D] (harmonic codec, normalised) -> the log of
    its harmonic shares averaged over its frames within FRAMES_WITHIN_DB of its loudest, weighted by
    their energy [B, n_harmonics]."""
    loud_db = frames[..., 1].float() * loud_scale_db - loud_offset_db           # [B, T]
    w = torch.pow(10.0, (loud_db - loud_db.amax(1, keepdim=True)) / 10.0)
    w = w * (loud_db > loud_db.amax(1, keepdim=True) - FRAMES_WITHIN_DB)
    shares = frames[..., 2:2 + n_harmonics].float().clamp(min=0.0)
    shares = shares / (shares.sum(-1, keepdim=True) + 1e-8)
    mean = (shares * w[..., None]).sum(1) / (w.sum(1, keepdim=True) + 1e-12)
    return torch.log(mean + LOG_FLOOR)


@dataclass
class SpectralMemory:
    """xy [I, 2] the instruments' points; residual [I, P, H] log gains (float) for pitches
    pitch_lo..pitch_lo + P - 1; has [I, P] where an instrument has a note at that pitch."""

    xy: torch.Tensor
    residual: torch.Tensor
    has: torch.Tensor
    pitch_lo: int
    source: str = ""
    # Map units: the memory's say fades with the distance d to the nearest instrument that
    # has the pitch, as exp(-(d / reach)^2): beyond its instruments it knows nothing, and
    # the decoder plays alone. None: full strength everywhere.
    reach: float | None = None

    def __post_init__(self) -> None:
        i, p, h = self.residual.shape
        if self.xy.shape != (i, 2) or self.has.shape != (i, p) or h < 1 or p < 1:
            raise CheckpointError(f"spectral memory: shapes xy {list(self.xy.shape)}, residual "
                                  f"{[i, p, h]}, has {list(self.has.shape)} do not agree")
        if self.reach is not None and not (math.isfinite(self.reach) and self.reach > 0):
            raise CheckpointError(f"spectral memory: reach {self.reach} must be a positive "
                                  "distance (map units)")

    @property
    def n_harmonics(self) -> int:
        return int(self.residual.shape[2])

    def to(self, device: torch.device | str) -> SpectralMemory:
        return dataclasses.replace(self, xy=self.xy.to(device),
                                   residual=self.residual.to(device), has=self.has.to(device))

    def gains_log(self, points: torch.Tensor, pitches: torch.Tensor) -> torch.Tensor:
        """points [B, 2] (or [B, T, 2]: a point per frame), pitches [B] (MIDI) -> log gain per
        harmonic [B, H] (or [B, T, H]); zero where no instrument has the pitch."""
        per_frame = points.dim() == 3
        pts = points if per_frame else points[:, None, :]                       # [B, T, 2]
        n_p = self.residual.shape[1]
        m = (pitches.long().to(self.xy.device) - self.pitch_lo).clamp(0, n_p - 1)  # [B]
        d2 = ((pts.float().to(self.xy.device)[:, :, None, :] - self.xy[None, None]) ** 2
              ).sum(-1)                                                          # [B, T, I]
        usable = self.has[:, m].T[:, None, :]                                    # [B, 1, I]
        d2 = torch.where(usable, d2, torch.full_like(d2, float("inf")))
        near_d2, near, w = nearest_weights(d2, K_NEAREST, EPS)                  # [B, T, k]
        res = self.residual.float()[near, m[:, None, None]]                     # [B, T, k, H]
        lim = MAX_GAIN_DB / 20.0 * 2.302585092994046  # dB -> natural log of amplitude
        g = (res * w[..., None]).sum(-2).clamp(-lim, lim)
        if self.reach is not None:
            d_min = near_d2[..., :1].clamp(max=1e30).sqrt()                     # [B, T, 1]
            g = g * torch.exp(-(d_min / self.reach) ** 2)
        return g if per_frame else g[:, 0]

    def apply(self, frames: torch.Tensor, points: torch.Tensor,
              pitches: torch.Tensor) -> torch.Tensor:
        """frames [B, T, D] (harmonic codec, normalised) with each harmonic's share scaled by
        its gain, the shares' sum kept (loudness, pitch and noise unchanged)."""
        g = self.gains_log(points, pitches).to(frames.device, frames.dtype)
        h = self.n_harmonics
        out = frames.clone()
        gain = torch.exp(g if g.dim() == 3 else g[:, None, :])
        # (a share the decoder left at zero gets the floor the profiles count it at; the
        # shares keep their sum, as the codec and the figures on frames read them)
        shares = frames[..., 2:2 + h].clamp(min=0.0)
        scaled = (shares + LOG_FLOOR) * gain
        out[..., 2:2 + h] = scaled * (shares.sum(-1, keepdim=True)
                                      / scaled.sum(-1, keepdim=True).clamp(min=1e-12))
        return out

    def to_payload(self) -> dict[str, Any]:
        return {"xy": self.xy.float().cpu(), "residual": self.residual.half().cpu(),
                "has": self.has.cpu(), "pitch_lo": int(self.pitch_lo), "source": self.source,
                "reach": self.reach}

    @classmethod
    def from_payload(cls, d: Any, where: str) -> SpectralMemory:
        try:
            return cls(torch.as_tensor(d["xy"]).float(), torch.as_tensor(d["residual"]).float(),
                       torch.as_tensor(d["has"]).bool(), int(d["pitch_lo"]),
                       str(d.get("source", "")),
                       None if d.get("reach") is None else float(d["reach"]))
        except (KeyError, TypeError, ValueError, CheckpointError) as e:
            raise CheckpointError(f"{where}: damaged spectral memory ({e}); rebuild it with "
                                  "`pgesam-live memory`") from None




def floored(profile: torch.Tensor, floor_db: float = FLOOR_DB) -> torch.Tensor:
    """A log profile [..., H] with every harmonic raised to at least `floor_db` below its
    strongest: what lies further down is not heard, and its difference is not kept."""
    floor = profile.amax(-1, keepdim=True) - floor_db / 20.0 * math.log(10.0)
    return torch.maximum(profile, floor)


__all__ = ["SpectralMemory", "floored", "nearest_weights", "static_log_profile"]
