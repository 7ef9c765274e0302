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
out), or, with a `reach`, nothing: the decoder alone.

A memory with `Dynamics` (the default of `pgesam-live memory`; `--note-long` builds the first
kind, which leaves the decoder's dynamics untouched) also remembers how the note moves: per
instrument and pitch the difference of the level envelopes (dB re each note's peak, floored
60 dB down) in segments of the note (a frame each at the attack and at the note-off,
`LEVEL_EDGES`), and how each of a few longer segments' harmonic profile (`SPECTRUM_EDGES`, on
`BAND_EDGES`' bands of harmonics) departs from the note-long one: the piano's decay, its
upper harmonics dying first, the flute's swell, the release. Between segment centres the
corrections are interpolated linearly, frame by frame. The level moves the harmonic loudness
and the noise bands together (their balance stays the decoder's).

A pure function of (point, pitch, frame index): a streamed head (frames from 0), the rest of
its note and a note following a moving point (points per frame) get the same gains.

Built by `pgesam-live memory` (model/memory_build.py) from the training split the model was
trained on; stored in the model file (`spectral_memory`): for 160 instruments x 25 pitches
0.5 MB (float16) note-long, about 0.75 MB with the dynamics (every table in 8-bit codes of
0.5 dB).
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
LN_PER_DB = math.log(10.0) / 20.0  # dB -> natural log of amplitude
# Dynamics' segments, in frames of the harmonic codec (75 /s; a 4 s note of 3 s held + 1 s
# release: the note-off at frame 225).
# The level: a segment per frame where it moves fastest (the first frames, the note-off), so
# an attack or a release is put frame by frame, not averaged into a spike.
LEVEL_EDGES = (0, 1, 2, 3, 4, 5, 6, 8, 11, 15, 20, 26, 34, 45, 60, 80, 105, 135, 165, 195,
               215, 222, 224, 225, 226, 227, 228, 230, 233, 237, 242, 248, 256, 266, 280, 300)
SPECTRUM_EDGES = (0, 4, 12, 40, 120, 225, 260, 300)
BAND_EDGES = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)  # harmonic bands (0-based)
CODE_STEP_DB = 0.5  # stored tables: 8-bit codes of this many dB (+-63.5 dB)


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


def _shares(frames: torch.Tensor, n_harmonics: int) -> torch.Tensor:
    """frames [B, T, D] -> their harmonic shares [B, T, H], non-negative, summing to 1."""
    shares = frames[..., 2:2 + n_harmonics].float().clamp(min=0.0)
    return shares / (shares.sum(-1, keepdim=True) + 1e-8)


def static_log_profile(frames: torch.Tensor, loud_scale_db: float, loud_offset_db: float,
                       n_harmonics: int) -> torch.Tensor:
    """A note's harmonic profile: frames [B, T, D] (harmonic codec, normalised) -> the log of
    its harmonic shares averaged over its frames within FRAMES_WITHIN_DB of its loudest, weighted by
    their energy [B, n_harmonics]."""
    loud_db = frames[..., 1].float() * loud_scale_db - loud_offset_db           # [B, T]
    w = torch.pow(10.0, (loud_db - loud_db.amax(1, keepdim=True)) / 10.0)
    w = w * (loud_db > loud_db.amax(1, keepdim=True) - FRAMES_WITHIN_DB)
    shares = _shares(frames, n_harmonics)
    mean = (shares * w[..., None]).sum(1) / (w.sum(1, keepdim=True) + 1e-12)
    return torch.log(mean + LOG_FLOOR)


def interpolation(edges: tuple[int, ...], n_frames: int, first_frame: int = 0
                  ) -> torch.Tensor:
    """[n_frames, S] weights that read frame first_frame + t's value off S segments (`edges`,
    S + 1 frame indices) linearly between the segments' centres, held flat before the first
    centre and after the last."""
    centres = [(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    t = torch.arange(first_frame, first_frame + n_frames, dtype=torch.float64)
    c = torch.tensor(centres, dtype=torch.float64)
    out = torch.zeros(n_frames, len(centres), dtype=torch.float64)
    if len(centres) == 1:
        return out.add_(1.0).float()
    tc = t.clamp(float(c[0]), float(c[-1]))
    j = torch.searchsorted(c, tc, right=True).clamp(1, len(centres) - 1)
    frac = (tc - c[j - 1]) / (c[j] - c[j - 1])
    rows = torch.arange(n_frames)
    out[rows, j - 1] = 1.0 - frac
    out[rows, j] += frac
    return out.float()


def _check_edges(edges: tuple[int, ...], what: str) -> None:
    steps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    if len(edges) < 2 or edges[0] != 0 or min(steps) <= 0:
        raise CheckpointError(f"spectral memory: {what} {list(edges)} must rise from 0")


def level_db_re_peak(frames: torch.Tensor, loud_scale_db: float, loud_offset_db: float
                     ) -> torch.Tensor:
    """frames [B, T, D] (harmonic codec, normalised) -> the harmonic level of each frame in dB
    re the note's loudest, floored FLOOR_DB down [B, T]."""
    loud_db = frames[..., 1].float() * loud_scale_db - loud_offset_db
    return (loud_db - loud_db.amax(1, keepdim=True)).clamp(min=-FLOOR_DB)


def segment_means(x: torch.Tensor, edges: tuple[int, ...]) -> torch.Tensor:
    """x [B, T, ...] -> its mean over each segment of `edges` (within T) [B, S, ...]."""
    return torch.stack([x[:, a:b].mean(1)
                        for a, b in zip(edges[:-1], edges[1:], strict=True)], 1)


def segment_log_profiles(frames: torch.Tensor, loud_scale_db: float, loud_offset_db: float,
                         n_harmonics: int, edges: tuple[int, ...]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """As `static_log_profile`, one per segment of `edges`: frames [B, T, D] -> (log
    profiles [B, S, H], which segments hold frames within FLOOR_DB of the note's loudest
    [B, S])."""
    rel = level_db_re_peak(frames, loud_scale_db, loud_offset_db)
    w = torch.pow(10.0, rel / 10.0) * (rel > -FLOOR_DB)
    shares = _shares(frames, n_harmonics)
    # each segment's frames weigh re the segment's loudest (a quiet tail keeps its colour)
    outs, ok = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        ws = w[:, a:b]
        ws = ws / ws.amax(1, keepdim=True).clamp(min=1e-30)
        mean = (shares[:, a:b] * ws[..., None]).sum(1) / (ws.sum(1, keepdim=True) + 1e-12)
        outs.append(torch.log(mean + LOG_FLOOR))
        ok.append(ws.sum(1) > 0)
    return torch.stack(outs, 1), torch.stack(ok, 1)


@dataclass
class Dynamics:
    """How a training instrument's note moves, against the decoder's at its point.

    level_db [I, P, S_l] dB added to the harmonic level in each of `level_edges`' segments;
    band_log [I, P, S_s, NB] natural-log gains added to the note-long residual's, per
    segment of `spectrum_edges` and band of harmonics (`band_edges`, 0-based harmonic
    indices). The noise bands follow the level (a table of their own, measured on the
    bundled model: training identity at the instruments' points 0.81 -> 0.63, MR-STFT 0.53 ->
    0.60; left untouched: 0.77 and 0.52)."""

    level_db: torch.Tensor
    band_log: torch.Tensor
    level_edges: tuple[int, ...] = LEVEL_EDGES
    spectrum_edges: tuple[int, ...] = SPECTRUM_EDGES
    band_edges: tuple[int, ...] = BAND_EDGES

    def check(self, i: int, p: int, h: int) -> None:
        for edges, what in ((self.level_edges, "level edges"),
                            (self.spectrum_edges, "spectrum edges"),
                            (self.band_edges, "band edges")):
            _check_edges(edges, what)
        want_l = (i, p, len(self.level_edges) - 1)
        want_s = (i, p, len(self.spectrum_edges) - 1, len(self.band_edges) - 1)
        if (tuple(self.level_db.shape) != want_l or tuple(self.band_log.shape) != want_s
                or self.band_edges[-1] != h):
            raise CheckpointError(
                f"spectral memory: dynamics' shapes level {list(self.level_db.shape)}, bands "
                f"{list(self.band_log.shape)} (bands up to harmonic {self.band_edges[-1]}) do "
                f"not fit {i} instruments x {p} pitches x {h} harmonics")

    def band_of_harmonic(self) -> torch.Tensor:
        """[H] the band index of each harmonic."""
        e = self.band_edges
        widths = [b - a for a, b in zip(e, e[1:], strict=False)]
        return torch.repeat_interleave(torch.arange(len(e) - 1), torch.tensor(widths))


def _code(x: torch.Tensor, per_db: float) -> torch.Tensor:
    """Values in units of 1 / per_db dB -> 8-bit codes of CODE_STEP_DB."""
    return (x.float() / per_db / CODE_STEP_DB).round().clamp(-127, 127).to(torch.int8)


def _uncode(q: torch.Tensor, per_db: float) -> torch.Tensor:
    return q.float() * CODE_STEP_DB * per_db


# (near [B, T', k], m [B], weights [B, T', k], fade [B, T', 1]): SpectralMemory._blend
_Blend = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class SpectralMemory:
    """xy [I, 2] the instruments' points; residual [I, P, H] log gains (float) for pitches
    pitch_lo..pitch_lo + P - 1; has [I, P] where an instrument has a note at that pitch;
    dynamics (optional): how the notes move over time (`Dynamics`)."""

    xy: torch.Tensor
    residual: torch.Tensor
    has: torch.Tensor
    pitch_lo: int
    source: str = ""
    # Map units: the memory's say fades with the distance d to the nearest instrument that
    # has the pitch, as exp(-(d / reach)^2): beyond its instruments it knows nothing, and
    # the decoder plays alone. None: full strength everywhere.
    reach: float | None = None
    dynamics: Dynamics | None = None
    # the codec's normalisation of loudness and noise (dB per unit), for the level's moves,
    # and its layout after the shares: n_noise_bands noise bands, then (the partials codec)
    # a stretch channel, n_partials ratios and n_partials levels on the loudness's scale
    loud_scale_db: float = 140.0
    noise_scale_db: float = 160.0
    n_noise_bands: int = 32
    n_partials: int = 0

    def __post_init__(self) -> None:
        i, p, h = self.residual.shape
        if self.xy.shape != (i, 2) or self.has.shape != (i, p) or h < 1 or p < 1:
            raise CheckpointError(f"spectral memory: shapes xy {list(self.xy.shape)}, residual "
                                  f"{[i, p, h]}, has {list(self.has.shape)} do not agree")
        if self.reach is not None and not (math.isfinite(self.reach) and self.reach > 0):
            raise CheckpointError(f"spectral memory: reach {self.reach} must be a positive "
                                  "distance (map units)")
        if self.dynamics is not None:
            self.dynamics.check(i, p, h)

    @property
    def n_harmonics(self) -> int:
        return int(self.residual.shape[2])

    def to(self, device: torch.device | str) -> SpectralMemory:
        dyn = self.dynamics
        if dyn is not None:
            dyn = dataclasses.replace(dyn, level_db=dyn.level_db.to(device),
                                      band_log=dyn.band_log.to(device))
        return dataclasses.replace(self, xy=self.xy.to(device),
                                   residual=self.residual.to(device), has=self.has.to(device),
                                   dynamics=dyn)

    def _blend(self, points: torch.Tensor, pitches: torch.Tensor) -> _Blend:
        """points [B, T', 2] -> (near [B, T', k] the nearest instruments with the pitch, m
        [B] the pitches' rows, their weights [B, T', k], the reach's fade [B, T', 1])."""
        n_p = self.residual.shape[1]
        m = (pitches.long().to(self.xy.device) - self.pitch_lo).clamp(0, n_p - 1)  # [B]
        d2 = ((points.float().to(self.xy.device)[:, :, None, :] - self.xy[None, None]) ** 2
              ).sum(-1)                                                          # [B, T, I]
        usable = self.has[:, m].T[:, None, :]                                    # [B, 1, I]
        d2 = torch.where(usable, d2, torch.full_like(d2, float("inf")))
        near_d2, near, w = nearest_weights(d2, K_NEAREST, EPS)                  # [B, T, k]
        fade = torch.ones_like(near_d2[..., :1])
        if self.reach is not None:
            d_min = near_d2[..., :1].clamp(max=1e30).sqrt()                     # [B, T, 1]
            fade = torch.exp(-(d_min / self.reach) ** 2)
        return near, m, w, fade

    def _note_long(self, blend: _Blend) -> torch.Tensor:
        """The note-long log gains [B, T', H] of a blend."""
        near, m, w, fade = blend
        res = self.residual.float()[near, m[:, None, None]]                     # [B, T', k, H]
        lim = MAX_GAIN_DB * LN_PER_DB
        return (res * w[..., None]).sum(-2).clamp(-lim, lim) * fade

    @staticmethod
    def _over_time(table: torch.Tensor, edges: tuple[int, ...], blend: _Blend,
                   n_frames: int, first_frame: int) -> torch.Tensor:
        """A dynamics table [I, P, S, ...] blended and read frame by frame -> [B, T, ...]."""
        near, m, w, fade = blend
        wf = w * fade                                                           # [B, T', k]
        x = table.float()[near, m[:, None, None]]                               # [B,T',k,S,..]
        x = (x * wf.reshape(*wf.shape, *([1] * (x.dim() - 3)))).sum(2)          # [B,T',S,..]
        m_t = interpolation(edges, n_frames, first_frame).to(x.device)          # [T, S]
        if x.shape[1] > 1:  # a point per frame
            return torch.einsum("ts,bts...->bt...", m_t, x)
        return torch.einsum("ts,bs...->bt...", m_t, x[:, 0])

    @staticmethod
    def _per_frame(points: torch.Tensor) -> torch.Tensor:
        """points [B, 2] -> [B, 1, 2]; [B, T, 2] (a point per frame) as it is."""
        return points if points.dim() == 3 else points[:, None, :]

    def gains_log(self, points: torch.Tensor, pitches: torch.Tensor) -> torch.Tensor:
        """The note-long part: points [B, 2] (or [B, T, 2]: a point per frame), pitches [B]
        (MIDI) -> log gain per harmonic [B, H] (or [B, T, H]); zero where no instrument has
        the pitch."""
        g = self._note_long(self._blend(self._per_frame(points), pitches))
        return g if points.dim() == 3 else g[:, 0]

    def level_db(self, points: torch.Tensor, pitches: torch.Tensor, n_frames: int,
                 first_frame: int = 0, blend: _Blend | None = None) -> torch.Tensor:
        """The dynamics' level dB [B, T] of frames first_frame .. + n_frames of notes at points
        [B, 2] (or [B, n_frames, 2]) and pitches [B] (zero without dynamics)."""
        if self.dynamics is None:
            return torch.zeros(points.shape[0], n_frames, device=self.xy.device)
        blend = blend or self._blend(self._per_frame(points), pitches)
        return self._over_time(self.dynamics.level_db, self.dynamics.level_edges, blend,
                               n_frames, first_frame).clamp(-MAX_GAIN_DB, MAX_GAIN_DB)

    def frame_gains(self, points: torch.Tensor, pitches: torch.Tensor, n_frames: int,
                    first_frame: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames first_frame .. + n_frames of notes at points [B, 2] (or [B, n_frames, 2])
        and pitches [B] -> (log gain per harmonic [B, T, H], level dB [B, T]): the note-long
        gains plus the dynamics' (a zero level without them)."""
        blend = self._blend(self._per_frame(points), pitches)
        static = self._note_long(blend)                                         # [B, T', H]
        level = self.level_db(points, pitches, n_frames, first_frame, blend)
        dyn = self.dynamics
        if dyn is None:
            return static.expand(-1, n_frames, -1), level
        band_t = self._over_time(dyn.band_log, dyn.spectrum_edges, blend, n_frames,
                                 first_frame)                                   # [B, T, NB]
        lim = MAX_GAIN_DB * LN_PER_DB
        gains = (static + band_t[..., dyn.band_of_harmonic().to(band_t.device)]
                 ).clamp(-lim, lim)
        return gains, level

    def apply(self, frames: torch.Tensor, points: torch.Tensor, pitches: torch.Tensor,
              first_frame: int = 0) -> torch.Tensor:
        """frames [B, T, D] (harmonic codec, normalised; frame first_frame onwards of their
        notes) with each harmonic's share scaled by its gain, the shares' sum kept, and,
        with dynamics, the loudness and the noise bands moved by the level together (pitch
        unchanged)."""
        h = self.n_harmonics
        if self.dynamics is not None:
            want = 2 + h + self.n_noise_bands + (1 + 2 * self.n_partials if self.n_partials
                                                 else 0)
            if frames.shape[-1] != want:
                raise CheckpointError(
                    f"spectral memory: built for frames of {want} channels ({h} harmonics, "
                    f"{self.n_noise_bands} noise bands, {self.n_partials} partials), given "
                    f"{frames.shape[-1]}: rebuild it with `pgesam-live memory` for this model")
        g, level = (x.to(frames.device, frames.dtype) for x in
                    self.frame_gains(points, pitches, frames.shape[1], first_frame))
        out = frames.clone()
        gain = torch.exp(g)
        # (a share the decoder left at zero gets the floor the profiles count it at; the
        # shares keep their sum, as the codec and the figures on frames read them)
        shares = frames[..., 2:2 + h].clamp(min=0.0)
        scaled = (shares + LOG_FLOOR) * gain
        out[..., 2:2 + h] = scaled * (shares.sum(-1, keepdim=True)
                                      / scaled.sum(-1, keepdim=True).clamp(min=1e-12))
        if self.dynamics is not None:
            out[..., 1] = frames[..., 1] + level / self.loud_scale_db
            a, b = 2 + h, 2 + h + self.n_noise_bands
            out[..., a:b] = frames[..., a:b] + level[..., None] / self.noise_scale_db
            if self.n_partials:  # the free partials' levels move with it; silent ones stay
                lv = slice(b + 1 + self.n_partials, b + 1 + 2 * self.n_partials)
                p_old = frames[..., lv]
                moved = (p_old + level[..., None] / self.loud_scale_db).clamp(min=0.0)
                out[..., lv] = torch.where(p_old > 0, moved, p_old)
        return out

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"xy": self.xy.float().cpu(), "has": self.has.cpu(),
                               "pitch_lo": int(self.pitch_lo), "source": self.source,
                               "reach": self.reach}
        dyn = self.dynamics
        if dyn is None:
            out["residual"] = self.residual.half().cpu()
            return out
        out.update({
            "residual_codes": _code(self.residual.cpu(), LN_PER_DB),
            "loud_scale_db": self.loud_scale_db, "noise_scale_db": self.noise_scale_db,
            "n_noise_bands": self.n_noise_bands, "n_partials": self.n_partials,
            "dynamics": {"level_codes": _code(dyn.level_db.cpu(), 1.0),
                         "band_codes": _code(dyn.band_log.cpu(), LN_PER_DB),
                         "level_edges": list(dyn.level_edges),
                         "spectrum_edges": list(dyn.spectrum_edges),
                         "band_edges": list(dyn.band_edges)}})
        return out

    @classmethod
    def from_payload(cls, d: Any, where: str) -> SpectralMemory:
        try:
            if "residual_codes" in d:
                residual = _uncode(torch.as_tensor(d["residual_codes"]), LN_PER_DB)
            else:
                residual = torch.as_tensor(d["residual"]).float()
            dyn = None
            if d.get("dynamics") is not None:
                y = d["dynamics"]
                dyn = Dynamics(_uncode(torch.as_tensor(y["level_codes"]), 1.0),
                               _uncode(torch.as_tensor(y["band_codes"]), LN_PER_DB),
                               tuple(int(e) for e in y["level_edges"]),
                               tuple(int(e) for e in y["spectrum_edges"]),
                               tuple(int(e) for e in y["band_edges"]))
            return cls(torch.as_tensor(d["xy"]).float(), residual,
                       torch.as_tensor(d["has"]).bool(), int(d["pitch_lo"]),
                       str(d.get("source", "")),
                       None if d.get("reach") is None else float(d["reach"]), dyn,
                       float(d.get("loud_scale_db", 140.0)),
                       float(d.get("noise_scale_db", 160.0)),
                       int(d.get("n_noise_bands", 32)), int(d.get("n_partials", 0)))
        except (KeyError, TypeError, ValueError, CheckpointError) as e:
            raise CheckpointError(f"{where}: damaged spectral memory ({e}); rebuild it with "
                                  "`pgesam-live memory`") from None


def floored(profile: torch.Tensor, floor_db: float = FLOOR_DB) -> torch.Tensor:
    """A log profile [..., H] with every harmonic raised to at least `floor_db` below its
    strongest: what lies further down is not heard, and its difference is not kept."""
    floor = profile.amax(-1, keepdim=True) - floor_db / 20.0 * math.log(10.0)
    return torch.maximum(profile, floor)


__all__ = ["Dynamics", "SpectralMemory", "floored", "interpolation", "level_db_re_peak",
           "nearest_weights", "segment_log_profiles", "segment_means",
           "static_log_profile"]
