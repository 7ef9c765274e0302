"""The `partials` codec: the harmonic codec plus what a harmonic grid drops.

HarmonicCodec forces every sound onto one harmonic grid around the key's f0. PartialsCodec keeps
its 98 channels (same meaning, same normalisation) and adds:
- a stretch coefficient B per frame: partial k sounds at k f0 sqrt((1 + B k^2) / (1 + B))
  (a stiff string: piano, harp, bass; partial 1 stays at f0);
- a small set of free sinusoidal partials per frame, each a frequency ratio to f0 and a level
  (bells, bars, the glockenspiel's 2.74 / 5.31 partials, a detuned second voice);
and finds f0 differently:
- a common fundamental for dyads: when partials sit at thirds (or quarters) of the key's f0 (a
  fifth or fourth below, a fifths lead), f0 is that common fundamental, and both voices are
  harmonics of it; an octave below (16-foot organ stops) as before;
- a wide per-frame search (+-SEARCH_CENTS) on compressed magnitudes with a Gaussian prior
  around the nominal f0 instead of a hard +-100-cent window, and a frame whose best candidate is
  still on the search's edge is treated as unvoiced (it holds the note's median): f0 is never
  pinned to the edge.

Shapes: wave [B, N] at 24 kHz; frames [B, T, D], T = N // 320 (75 frames/s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pgesam_live.errors import CodecError
from pgesam_live.model.codec import HarmonicCodec, _check_frames, _median3


class PartialsCodec(HarmonicCodec):
    """Harmonic-plus-noise frames plus stretch and free partials, 24 kHz, 75 frames/s.

    Frame layout, D = 2 + K + B + 1 + 2 P (K = 64 harmonics, B = 32 noise bands, P = 16
    partials: D = 131), fixed affine normalisations (not data statistics):
      [0 : 2+K+B]        exactly HarmonicCodec's layout: pitch (MIDI of f0 - 20) / 100,
                         loudness (dB + 140) / 140, harmonic distribution (sums to 1),
                         noise (dB of band power density + 160) / 160
      [S]                stretch: sqrt(B) / STRETCH_SQRT_MAX, B = inharmonicity coefficient
                         (0 = harmonic; 1 = B of 0.04), S = 2 + K + B
      [S+1 : S+1+P]      partial ratio: (log2(partial_hz / f0_hz) - RATIO_MIN_LOG2) /
                         RATIO_SPAN_LOG2, i.e. ratios 1/4 .. 64 -> 0 .. 1
      [S+1+P : S+1+2P]   partial level: (dB of the sinusoid's amplitude + 140) / 140
                         (0 = silent; same scale as the loudness channel)
    Decoding clamps every channel to its valid range. Decode is differentiable in the frames
    (an oscillator bank for the stretched harmonics and the partials, the harmonic codec's
    band noise).
    """

    name = "partials"

    STRETCH_SQRT_MAX = 0.2       # sqrt(B) at channel value 1: B up to 0.04
    FLAT_STRETCH = 1e-7          # B below this decodes as harmonic (wavetable synthesis)
    RATIO_MIN_LOG2 = -2.0
    RATIO_SPAN_LOG2 = 8.0
    LEVEL_OFFSET_DB = 140.0
    LEVEL_SCALE_DB = 140.0

    # Analysis settings beyond the harmonic codec's.
    SEARCH_CENTS = 350.0         # per-frame f0 search half-width (a prior, not a wall)
    PRIOR_CENTS = 150.0          # std of the Gaussian prior around the nominal f0
    LONG_WINDOW = 8192           # samples: the note-level f0 that anchors the frames' track
    ANCHOR_CENTS = 15.0          # per-frame median this far from it is shifted onto it
    TIGHT_PRIOR_CENTS = 40.0     # the second per-frame search's prior around that f0
    SALIENCE_POWER = 0.5         # magnitudes^0.5 in the harmonic sum: one loud inharmonic
                                 # partial cannot drag f0 onto itself
    STRETCH_GRID = 48            # B candidates, log-spaced over [1e-6, 0.02], plus 0
    STRETCH_PARTIALS = 24        # partials that vote for B
    STRETCH_MIN_GAIN = 1.05      # a B is kept only when it catches 5 % more peak energy
    STRETCH_MAX_ERROR = 0.0025   # and its law places the partials within 0.25 % on average
    DIVISORS = (2, 3, 4)         # common fundamentals tried below the key's f0
    DIVISOR_SPAN = 8.5           # peaks up to this many times the key's f0 vote
    DIVISOR_TOLERANCE = 0.04     # a peak within 0.04 grid steps of a multiple is on the grid
    DIVISOR_SLACK = 0.03         # the smallest d within this share of the best grid wins
    DIVISOR_GAIN = 0.08          # and it must explain this much more than the key's grid
    DIVISOR_MIN_PEAKS = 2        # with at least this many peaks off the key's grid
    OFF_GRID_RATIO = 0.004       # a harmonic's peak steadily 0.4 % off k f0 is a free partial
    PARTIAL_FLOOR_DB = -45.0     # free partials: at least this loud re the loudest peak
    PARTIAL_PROMINENCE = 4.0     # and this many times the residual's local median

    def __init__(self, n_harmonics: int = 64, n_noise_bands: int = 32,
                 n_partials: int = 16) -> None:
        super().__init__(n_harmonics, n_noise_bands)
        if n_partials < 1:
            raise CodecError("the partials codec needs n_partials >= 1")
        self.n_partials = n_partials
        self.harmonic_dim = self.dim
        self.dim = self.harmonic_dim + 1 + 2 * n_partials

    # ----------------------------------------------------------------------------- analysis
    def _note_f0(self, x: torch.Tensor, hint_hz: float | None, n_frames: int) -> float:
        """The note's nominal f0: the hint (else the harmonic codec's wide estimate) divided
        by the smallest d in DIVISORS whose grid f / d explains the loud frames' spectral
        peaks as well as any finer grid does (an organ stop an octave below: d = 2; a dyad a
        fourth or fifth apart: d = 3 or 4, both voices then harmonics of one f0)."""
        hop = self.hop
        e = torch.nn.functional.pad(x**2, (1024, 1024 + hop)).unfold(0, 2048, hop)[
            :n_frames].sum(-1)
        loud_idx = torch.nonzero(e >= e.max() * 1e-2)[:, 0]
        loud_idx = loud_idx[torch.linspace(0, len(loud_idx) - 1, min(32, len(loud_idx))).long()]
        mag = self._spectra(x, 2048, n_frames, only=loud_idx)[0]
        loud = torch.ones(len(loud_idx), dtype=torch.bool)
        f0 = hint_hz if hint_hz is not None else self._nominal_f0(mag, loud)
        # The note may sound off its key (detuned, or a sample tuned elsewhere): the mean
        # spectrum's best f0 within the wide search first, then the common fundamental.
        mean = mag.mean(0, keepdim=True)
        f0 = float(self._search_f0(mean, f0, 0.0, f0, self.PRIOR_CENTS)[0])
        self._note_divisor = self._divisor(mean[0], f0)
        self._x = x  # the later steps' long-window look at the note
        return min(max(f0 / self._note_divisor, 20.0), 5000.0)

    def _divisor(self, mean_mag: torch.Tensor, f0_hz: float) -> int:
        """Which grid f0 / d (d in DIVISORS) explains the spectral peaks up to
        DIVISOR_SPAN f0: the share of peak energy within DIVISOR_TOLERANCE grid steps of a
        multiple; the smallest d within DIVISOR_SLACK of the best, and 1 unless it beats
        the key's own grid by DIVISOR_GAIN."""
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        hi = min(len(mean_mag) - 2, int(self.DIVISOR_SPAN * f0_hz / bin_hz))
        lo = max(1, int(0.2 * f0_hz / bin_hz))
        if hi <= lo + 4:
            return 1
        p = mean_mag**2
        # A peak stands 10x above the floor just beyond its main lobe (the 2048-sample
        # first-look window's: 4 of its bins).
        w = max(int(0.05 * f0_hz / bin_hz), 4 * self.ANALYSIS_FFT // 2048 + 2)
        floor = torch.nn.functional.pad(p[None, None], (w, w), mode="replicate")[
            0, 0].unfold(0, 2 * w + 1, 1).amin(-1)
        i = torch.arange(lo, hi)
        is_peak = (p[i] > p[i - 1]) & (p[i] >= p[i + 1]) & (p[i] > 10.0 * floor[i]) & (
            p[i] > 1e-4 * p[lo:hi].max())
        idx = i[is_peak]
        if len(idx) == 0:
            return 1
        f_pk, e_pk = idx.double() * bin_hz, p[idx]
        share, hits = {}, {}
        for d in (1, *self.DIVISORS):
            r = f_pk / (f0_hz / d)
            hits[d] = ((r - r.round()).abs() < self.DIVISOR_TOLERANCE) & (r.round() >= 1)
            share[d] = float(e_pk[hits[d]].sum() / e_pk.sum())
        # A finer grid must explain several peaks the key's grid does not (a second voice or
        # a sub-octave has many partials; one bell partial that falls near k / d is none).
        usable = [1] + [d for d in self.DIVISORS
                        if int((hits[d] & ~hits[1]).sum()) >= self.DIVISOR_MIN_PEAKS
                        and share[d] >= share[1] + self.DIVISOR_GAIN]
        best = max(share[d] for d in usable)
        return next(d for d in usable if share[d] >= best - self.DIVISOR_SLACK)

    def _stretch_factors(self, b: torch.Tensor, n: int) -> torch.Tensor:
        """Partial k's frequency over k f0: sqrt((1 + B k^2) / (1 + B)). b [...] -> [..., n]."""
        k = torch.arange(1, n + 1, dtype=b.dtype, device=b.device)
        return torch.sqrt((1.0 + b[..., None] * k**2) / (1.0 + b[..., None]))

    def _salience(self, mag: torch.Tensor, f0_hz: torch.Tensor,
                  stretch: float = 0.0) -> torch.Tensor:
        """Harmonic sum (weights 1/k over SEARCH_PARTIALS, stretched by B) on mag [T, F]
        already compressed; f0_hz [T, C] -> [T, C]."""
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        P = self.SEARCH_PARTIALS
        k = torch.arange(1, P + 1, dtype=torch.float64)
        s = self._stretch_factors(torch.tensor(stretch, dtype=torch.float64), P)
        pos = f0_hz[..., None] * k * s / bin_hz                      # [T, C, P]
        valid = pos < mag.shape[-1] - 2
        pos = pos.clamp(max=mag.shape[-1] - 2)
        i0 = pos.floor().long()
        a = pos - i0
        rows = mag.expand(pos.shape[0], -1)
        v = (torch.gather(rows, 1, i0.flatten(1)).view_as(pos) * (1 - a)
             + torch.gather(rows, 1, (i0 + 1).flatten(1)).view_as(pos) * a)
        return (v * valid / k).sum(-1)

    def _track_f0(self, mag: torch.Tensor, f0_nom: float) -> torch.Tensor:
        """Per-frame f0 [T]: a wide search whose prior picks among salience maxima (never a
        hard edge), stretch-aware; then anchored to the note's long-window f0 and searched
        again with a tight prior there, so a frame cannot flip to another maximum (a bar's
        strong inharmonic partial) while the others stay."""
        f0 = self._search_f0(mag, f0_nom, 0.0, f0_nom, self.PRIOR_CENTS)
        # A dyad's common fundamental is no string: its grid is not stretched.
        self._note_stretch = self._fit_stretch(mag, f0) if self._note_divisor == 1 else 0.0
        if self._note_stretch > 0.0:
            f0 = self._search_f0(mag, f0_nom, self._note_stretch, f0_nom, self.PRIOR_CENTS)
        anchor = self._long_window_f0(f0, f0_nom)
        if anchor is None:
            return f0
        f0 = self._search_f0(mag, f0_nom, self._note_stretch, anchor, self.TIGHT_PRIOR_CENTS)
        e = (mag**2).sum(-1)
        loud = e >= e.max() * 1e-2
        shift = 1200 * math.log2(anchor / float(f0[loud].median()))
        return f0 * 2.0 ** (shift / 1200) if abs(shift) > self.ANCHOR_CENTS else f0

    def _long_window_f0(self, f0: torch.Tensor, f0_nom: float) -> float | None:
        """The note's f0 from LONG_WINDOW-sample spectra of its loud frames (a few periods
        of window cannot tell a weak fundamental from a strong partial a few per cent off
        its grid place: a low glockenspiel bar's 5.3 f0 partial), the salience maximum
        that best combines salience and nearness to the short-window track's median; None
        when there is none."""
        x, n_frames = self._x, len(f0)
        e = torch.nn.functional.pad(x**2, (1024, 1024 + self.hop)).unfold(0, 2048, self.hop)[
            :n_frames].sum(-1)
        loud_idx = torch.nonzero(e >= e.max() * 1e-1)[:, 0]
        loud_idx = loud_idx[torch.linspace(0, len(loud_idx) - 1, min(16, len(loud_idx))).long()]
        mag = self._spectra(x, self.LONG_WINDOW, n_frames, only=loud_idx)[0].mean(
            0, keepdim=True)
        med = float(f0[loud_idx].median())
        c = torch.arange(-self.SEARCH_CENTS, self.SEARCH_CENTS + 1e-9, 1.0, dtype=torch.float64)
        sal = self._salience(mag**self.SALIENCE_POWER, (f0_nom * 2.0 ** (c / 1200))[None],
                             self._note_stretch)[0]
        is_max = torch.zeros_like(sal, dtype=torch.bool)
        is_max[1:-1] = (sal[1:-1] > sal[:-2]) & (sal[1:-1] >= sal[2:])
        if not bool(is_max.any()):
            return None
        c_med = 1200 * math.log2(med / f0_nom)
        score = torch.where(is_max, sal * torch.exp(-0.5 * ((c - c_med) / self.PRIOR_CENTS)
                                                    ** 2), -1.0)
        return f0_nom * 2.0 ** (float(c[int(score.argmax())]) / 1200)

    def _search_f0(self, mag: torch.Tensor, f0_nom: float, stretch: float,
                   prior_hz: float, prior_cents: float) -> torch.Tensor:
        """f0 [T] from mag [T, F]: candidates within +-SEARCH_CENTS of f0_nom; among each
        frame's salience maxima the one with the best salience x Gaussian prior (centre
        prior_hz, std prior_cents); parabola; 3-frame median; unvoiced frames (quiet, or no
        interior maximum) hold the median."""
        n_frames = mag.shape[0]
        step = self.SEARCH_STEP_CENTS
        c = torch.arange(-self.SEARCH_CENTS, self.SEARCH_CENTS + 1e-9, step,
                         dtype=torch.float64)
        cand = f0_nom * 2.0 ** (c / 1200)
        sal = self._salience(mag**self.SALIENCE_POWER, cand.expand(n_frames, -1), stretch)
        # The prior chooses among the salience's local maxima; it never moves one (a peak
        # is as wide as the window's main lobe, so a prior times it would pull f0 inwards).
        # A frame without an interior maximum is on the edge: unvoiced.
        is_max = torch.zeros_like(sal, dtype=torch.bool)
        is_max[:, 1:-1] = (sal[:, 1:-1] > sal[:, :-2]) & (sal[:, 1:-1] >= sal[:, 2:])
        c_prior = 1200 * math.log2(prior_hz / f0_nom)
        score = torch.where(is_max, sal * torch.exp(-0.5 * ((c - c_prior) / prior_cents) ** 2),
                            -1.0)
        best = score.argmax(-1)
        on_edge = ~is_max.any(-1)
        i = best.clamp(1, len(c) - 2)
        rows = torch.arange(n_frames)
        s0, s1, s2 = sal[rows, i - 1], sal[rows, i], sal[rows, i + 1]
        den = s0 - 2 * s1 + s2
        shift = torch.where(den < 0, 0.5 * (s0 - s2) / den.clamp(max=-1e-30), 0.0).clamp(-1, 1)
        f0 = f0_nom * 2.0 ** ((c[i] + shift * step) / 1200)
        frame_energy = (mag**2).sum(-1)
        voiced = (frame_energy >= frame_energy.max() * 1e-4) & ~on_edge
        f0_fill = f0[voiced].median() if bool(voiced.any()) else torch.tensor(f0_nom)
        f0 = torch.where(voiced, f0, f0_fill)
        return _median3(f0)

    def _fit_stretch(self, mag: torch.Tensor, f0: torch.Tensor) -> float:
        """The note's inharmonicity B: the candidate whose stretched partials (k f0 s_k, the
        first STRETCH_PARTIALS) catch the most peak magnitude in the loud frames' mean
        spectrum; 0 unless it beats the harmonic grid by STRETCH_MIN_GAIN."""
        e = (mag**2).sum(-1)
        loud = e >= e.max() * 1e-2
        mean = mag[loud].mean(0)                                      # [F]
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        # Partial 1's own frequency (a harmonic sum leans towards stretched upper partials).
        f0_note = float(f0[loud].median())
        lo = max(1, int(0.97 * f0_note / bin_hz))
        hi = min(len(mean) - 2, int(1.03 * f0_note / bin_hz) + 1)
        if hi > lo:
            i = lo + int(mean[lo:hi + 1].argmax())
            if mean[i] > 1e-3 * mean.max() and 0 < i < len(mean) - 1:
                m0, m1, m2 = float(mean[i - 1]), float(mean[i]), float(mean[i + 1])
                den = m0 - 2 * m1 + m2
                f0_note = (i + (0.5 * (m0 - m2) / den if den < 0 else 0.0)) * bin_hz
        P = self.STRETCH_PARTIALS
        cands = torch.cat([torch.zeros(1, dtype=torch.float64),
                           torch.logspace(-6, math.log10(0.02), self.STRETCH_GRID,
                                          dtype=torch.float64)])
        k = torch.arange(1, P + 1, dtype=torch.float64)
        pos = f0_note * k * self._stretch_factors(cands, P) / bin_hz  # [C, P]
        half = max(1, int(round(0.03 * f0_note / bin_hz)))
        idx = pos.round().long()[..., None] + torch.arange(-half, half + 1)
        ok = (idx[..., -1] < len(mean) - 1) & (pos * bin_hz < 0.98 * self.sample_rate / 2)
        idx = idx.clamp(0, len(mean) - 1)
        caught = (mean[idx].amax(-1) * ok).sum(-1)                    # [C]
        best = int(caught.argmax())
        if best == 0 or float(caught[best]) < self.STRETCH_MIN_GAIN * float(caught[0]):
            return 0.0
        # Refine: least squares on the caught peaks' positions p_k (parabolic), from
        # y_k = (p_k / (k f1))^2 = (1 + B k^2) / (1 + B), i.e. y_k - 1 = B (k^2 - y_k).
        sel = idx[best]                                               # [P, 2h+1]
        top = mean[sel].argmax(-1)
        ib = sel.gather(1, top[:, None])[:, 0].clamp(1, len(mean) - 2)
        q0, q1, q2 = mean[ib - 1], mean[ib], mean[ib + 1]
        curv = q0 - 2 * q1 + q2
        p_k = (ib.double() + torch.where(curv < 0, 0.5 * (q0 - q2) / curv.clamp(max=-1e-30),
                                         torch.zeros_like(curv)).clamp(-0.5, 0.5)) * bin_hz
        w = q1 * ok[best] * (q1 > 1e-3 * mean.max())
        y = (p_k / (k * f0_note)) ** 2
        num = float((w * (y - 1) * (k**2 - y)).sum())
        den_b = float((w * (k**2 - y) ** 2).sum())
        b = num / den_b if den_b > 0 else float(cands[best])
        lo_b, hi_b = float(cands[max(1, best - 1)]), float(cands[min(len(cands) - 1, best + 1)])
        b = min(max(b, lo_b), hi_b)
        # A stiff string follows the law closely; a bar or bell whose partials only happen to
        # lean the same way does not: then B = 0 and the free partials take them.
        pred = f0_note * k * self._stretch_factors(torch.tensor(b, dtype=torch.float64), P)
        err = float((w * (p_k - pred).abs() / pred).sum() / w.sum().clamp(min=1e-30))
        return b if err < self.STRETCH_MAX_ERROR else 0.0

    def _partial_centres_hz(self, mag: torch.Tensor, f0: torch.Tensor,
                            f0_nom: float) -> torch.Tensor:
        b = torch.full_like(f0, self._note_stretch)
        k = torch.arange(1, self.n_harmonics + 1, dtype=torch.float64)
        return f0[:, None] * k * self._stretch_factors(b, self.n_harmonics)

    def _harmonic_peaks(self, mag: torch.Tensor, window: torch.Tensor, fk: torch.Tensor,
                        f0_nom: float) -> tuple[torch.Tensor, torch.Tensor]:
        """As the harmonic codec's, but a maximum on the search window's edge is another
        partial's skirt, not this one: it then takes the level at the centre."""
        amp, peak_hz = super()._harmonic_peaks(mag, window, fk, f0_nom)
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        r = int(math.ceil(self.PEAK_HALF_WIDTH * f0_nom / bin_hz))
        centre = (fk / bin_hz).round().long().clamp(0, mag.shape[-1] - 1)
        off = (peak_hz / bin_hz).round().long() - centre
        at_edge = off.abs() >= r
        self._peak_at_edge = at_edge  # [T, K]: no peak of its own (read by _extra)
        centre_amp = 2.0 * torch.gather(mag, 1, centre) / window.sum()
        return (torch.where(at_edge, centre_amp, amp),
                torch.where(at_edge, centre.double() * bin_hz, peak_hz))

    def _harmonic_mask(self, f_bins: torch.Tensor, f0: torch.Tensor, peak_hz: torch.Tensor,
                       below: torch.Tensor, mask_hz: float) -> torch.Tensor:
        """Bins within mask_hz of a found partial, for stretched grids too (nearest partial by
        a sorted search, not by f / f0)."""
        T, K = peak_hz.shape
        srt, _ = torch.where(below, peak_hz, math.inf).sort(-1)
        pos = torch.searchsorted(srt.contiguous(), f_bins.expand(T, -1).contiguous())
        masked = torch.zeros(T, len(f_bins), dtype=torch.bool)
        for j in (-1, 0):
            h = (pos + j).clamp(0, K - 1)
            fh = torch.gather(srt, 1, h)
            masked |= (f_bins[None, :] - fh).abs() < mask_hz
        return masked

    def _extra(self, mag: torch.Tensor, window: torch.Tensor, f0: torch.Tensor,
               peak_hz: torch.Tensor, amp: torch.Tensor,
               f0_nom: float) -> dict[str, torch.Tensor] | None:
        """Free partials: the P strongest peaks of the loud frames' mean residual (the
        spectrum with the harmonic peaks' main lobes cut out), fixed in frequency over the
        note (as ratios to each frame's f0), their level measured per frame."""
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        T, Fb = mag.shape
        P = self.n_partials
        lobe_hz = 2.0 * self.sample_rate / len(window)                # Hann main lobe half-width
        f_bins = torch.arange(Fb, dtype=torch.float64) * bin_hz
        fk = self._partial_centres_hz(mag, f0, f0_nom)                # [T, K]
        # Harmonic peaks that are real (above 1e-3 of the frame's loudest) get their lobes cut.
        real = (amp > amp.amax(-1, keepdim=True) * 1e-3) & ~self._peak_at_edge
        # A harmonic whose peak sits steadily off its grid position (a bar's 7.95 partial
        # near harmonic 8) is not cut: the free partials take it at its own frequency.
        dev = (peak_hz - fk) / fk                                      # [T, K]
        e_t = (mag**2).sum(-1)
        loud_t = e_t >= e_t.max() * 1e-2
        w_dev = torch.where(real & loud_t[:, None], 1.0, 0.0)
        n_dev = w_dev.sum(0)
        med = torch.where(w_dev > 0, dev, math.nan).nanmedian(0).values  # [K]
        off_grid = (n_dev >= 3) & (med.abs() > self.OFF_GRID_RATIO) & (
            (med * fk.median(0).values).abs() > 2.0 * bin_hz)
        real = real & ~off_grid[None, :]
        srt, _ = torch.where(real, peak_hz, math.inf).sort(-1)
        pos = torch.searchsorted(srt.contiguous(), f_bins.expand(T, -1).contiguous())
        near = torch.zeros(T, Fb, dtype=torch.bool)
        for j in (-1, 0):
            fh = torch.gather(srt, 1, (pos + j).clamp(0, srt.shape[1] - 1))
            near |= (f_bins[None, :] - fh).abs() < 1.5 * lobe_hz  # main lobe + 1st sidelobe
        resid = torch.where(near, 0.0, mag)
        e = (mag**2).sum(-1)
        loud = e >= e.max() * 1e-2
        mean = resid[loud].mean(0)                                    # [F]
        ref = float(mag[loud].mean(0).max())
        # Local maxima, prominent above the residual's local median, loud enough.
        w = max(3, int(round(4 * lobe_hz / bin_hz)))
        full = mag[loud].mean(0)
        local_med = torch.nn.functional.pad(full[None, None], (w, w), mode="replicate")[
            0, 0].unfold(0, 2 * w + 1, 1).median(-1).values
        is_peak = torch.zeros(Fb, dtype=torch.bool)
        # A maximum of the residual must be one of the full spectrum too (not the edge of
        # a cut-out lobe).
        is_peak[1:-1] = ((mean[1:-1] > mean[:-2]) & (mean[1:-1] >= mean[2:])
                         & (full[1:-1] > full[:-2]) & (full[1:-1] >= full[2:]))
        ok = (is_peak & (mean > self.PARTIAL_PROMINENCE * local_med)
              & (mean > ref * 10 ** (self.PARTIAL_FLOOR_DB / 20))
              & (f_bins > 20.0) & (f_bins < 0.98 * self.sample_rate / 2))
        cand = torch.nonzero(ok)[:, 0]
        order = mean[cand].argsort(descending=True)
        chosen: list[int] = []
        for i in cand[order].tolist():  # strongest first, one per main lobe
            if all(abs(i - j) * bin_hz > 2.5 * lobe_hz for j in chosen):  # not a sidelobe
                chosen.append(i)
            if len(chosen) == P:
                break
        part_hz = torch.zeros(P, dtype=torch.float64)
        part_amp = torch.zeros(T, P, dtype=torch.float64)
        mask = torch.zeros(T, Fb, dtype=torch.bool)
        half = max(1, int(round(0.5 * lobe_hz / bin_hz)))
        for slot, i in enumerate(sorted(chosen)):
            lo, hi = max(0, i - half), min(Fb, i + half + 1)
            seg = mag[:, lo:hi]
            a = seg.amax(-1)
            # Parabolic peak position on the mean spectrum, for a fine frequency.
            if 0 < i < Fb - 1:
                m0, m1, m2 = (float(mean[i - 1]), float(mean[i]), float(mean[i + 1]))
                den = m0 - 2 * m1 + m2
                shift = 0.5 * (m0 - m2) / den if den < 0 else 0.0
            else:
                shift = 0.0
            part_hz[slot] = (i + max(-0.5, min(0.5, shift))) * bin_hz
            part_amp[:, slot] = 2.0 * a / window.sum()
            mask |= ((f_bins - part_hz[slot]).abs() < lobe_hz)[None, :]
        ratio = part_hz[None, :] / f0[:, None]                        # [T, P]
        # An off-grid harmonic whose peak a free partial now carries is silenced (else it
        # would sound twice, once on the grid).
        keep = torch.ones(T, self.n_harmonics, dtype=torch.float64)
        if len(chosen):
            pk = peak_hz.median(0).values                              # [K]
            taken = ((pk[:, None] - part_hz[None, :len(chosen)]).abs() < lobe_hz).any(-1)
            keep[:, off_grid & taken] = 0.0
        return {"mask": mask, "ratio": ratio, "amp": part_amp, "harmonic_keep": keep,
                "stretch": torch.full((T,), self._note_stretch, dtype=torch.float64)}

    def _with_extra(self, frames: torch.Tensor, extra: dict[str, torch.Tensor] | None,
                    gain: torch.Tensor) -> torch.Tensor:
        assert extra is not None
        amp = extra["amp"] * gain[:, None]
        present = amp > 0
        ratio = torch.where(present, extra["ratio"], 1.0)
        ratio_n = ((torch.log2(ratio) - self.RATIO_MIN_LOG2) / self.RATIO_SPAN_LOG2).clamp(0, 1)
        level_db = 20.0 * torch.log10(amp + 1e-12)
        level_n = ((level_db + self.LEVEL_OFFSET_DB) / self.LEVEL_SCALE_DB).clamp(min=0.0)
        stretch_n = (extra["stretch"].clamp(min=0).sqrt() / self.STRETCH_SQRT_MAX).clamp(0, 1)
        return torch.cat([frames, stretch_n[:, None], ratio_n, level_n], dim=-1)

    # ----------------------------------------------------------------------------- synthesis
    def unnormalise(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames [B, T, D] -> the harmonic codec's parameters (f0_hz [B, T], amplitude
        [B, T, K], noise_psd [B, T, bands]) plus stretch [B, T] (B), harmonic_hz [B, T, K],
        partial_hz [B, T, P] and partial_amplitude [B, T, P] (zero at or above Nyquist)."""
        S, P, K = self.harmonic_dim, self.n_partials, self.n_harmonics
        p = super().unnormalise(frames[..., :S])
        f0 = p["f0_hz"]
        stretch = (frames[..., S].clamp(0.0, 1.0) * self.STRETCH_SQRT_MAX) ** 2
        harm_hz = f0[..., None] * torch.arange(1, K + 1, device=frames.device,
                                               dtype=frames.dtype) * self._stretch_factors(
            stretch, K)
        nyq = self.sample_rate / 2 * 0.98
        # The harmonic codec silences k f0 >= Nyquist; a stretched partial may cross it first.
        amp = p["amplitude"] * (harm_hz < nyq).to(frames.dtype)
        log2r = frames[..., S + 1:S + 1 + P].clamp(0.0, 1.0) * self.RATIO_SPAN_LOG2 + \
            self.RATIO_MIN_LOG2
        part_hz = f0[..., None] * 2.0 ** log2r
        level_db = (frames[..., S + 1 + P:S + 1 + 2 * P] * self.LEVEL_SCALE_DB
                    - self.LEVEL_OFFSET_DB).clamp(max=self.LOUD_MAX_DB)
        part_amp = torch.where(frames[..., S + 1 + P:S + 1 + 2 * P] > 0,
                               10.0 ** (level_db / 20.0), 0.0) * (part_hz < nyq).to(
            frames.dtype)
        return {**p, "amplitude": amp, "stretch": stretch, "harmonic_hz": harm_hz,
                "partial_hz": part_hz, "partial_amplitude": part_amp}

    def decode(self, frames: torch.Tensor, seed: int | Sequence[int] = 0) -> torch.Tensor:
        """frames [B, T, D] -> wave [B, T * 320] at 24 kHz; differentiable in the frames,
        deterministic for a seed (as the harmonic codec's)."""
        frames = _check_frames(frames, self.dim)
        p = self.unnormalise(frames)
        wave = self._sinusoids(p)
        return wave + self._noise(p["noise_psd"], wave.shape[1], seed)

    def decode_deterministic(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, D] -> the stretched harmonics and free partials, no noise."""
        return self._sinusoids(self.unnormalise(_check_frames(frames, self.dim)))

    def _sinusoids(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Harmonics plus free partials [B, T * hop]. Unstretched harmonics (every B below
        FLAT_STRETCH, where partial 64 moves by under half a cent) take the harmonic codec's
        wavetable synthesis, about 5x faster than an oscillator each; stretched ones and the
        free partials an oscillator bank."""
        partials = oscillator_bank(p["partial_hz"], p["partial_amplitude"], self.hop,
                                   self.sample_rate)
        if float(p["stretch"].detach().max()) < self.FLAT_STRETCH:
            return self.synthesise(p["f0_hz"], p["amplitude"], None) + partials
        return oscillator_bank(p["harmonic_hz"], p["amplitude"], self.hop,
                               self.sample_rate) + partials


def oscillator_bank(freq_hz: torch.Tensor, amplitude: torch.Tensor, hop: int,
                    sample_rate: int, chunk: int = 16) -> torch.Tensor:
    """Sum of sinusoids: freq_hz, amplitude [B, T, P] per frame (frame t at sample t * hop)
    -> wave [B, T * hop]. Frequency and amplitude move linearly between frames (the phase is
    the exact integral of the linear frequency ramp: quadratic within a hop), the last frame
    is held; every oscillator starts at phase 0 (sine). Differentiable; P is summed in
    chunks so memory stays at [B, T, chunk, hop]."""
    B, T, _ = freq_hz.shape
    dev, dt = amplitude.device, amplitude.dtype
    # Oscillators silent in every frame of every note add nothing (nor any gradient: their
    # frequency does not reach the wave): most notes use a few of the free partials.
    live = amplitude.detach().amax(dim=(0, 1)) > 0
    if not bool(live.all()):
        freq_hz, amplitude = freq_hz[..., live], amplitude[..., live]
    P = freq_hz.shape[-1]
    f = torch.cat([freq_hz, freq_hz[:, -1:]], dim=1)                     # [B, T+1, P]
    a = torch.cat([amplitude, amplitude[:, -1:]], dim=1)
    f0, f1 = f[:, :-1], f[:, 1:]
    # Cycles at each frame start, in float64 and wrapped so high partials stay clean.
    inc = (0.5 * hop / sample_rate) * (f0 + f1).double()                  # [B, T, P]
    start = torch.cumsum(inc, dim=1) - inc
    start = (start - torch.floor(start)).to(dt)
    s = torch.arange(hop, device=dev, dtype=dt) / hop                    # [hop]
    out = torch.zeros(B, T, hop, device=dev, dtype=dt)
    for c in range(0, P, chunk):
        sl = slice(c, min(P, c + chunk))
        fa, fb = f0[..., sl, None], f1[..., sl, None]                    # [B, T, p, 1]
        cyc = start[..., sl, None] + (hop / sample_rate) * (fa * s + 0.5 * (fb - fa) * s**2)
        amp = a[:, :-1, sl, None] * (1 - s) + a[:, 1:, sl, None] * s
        out = out + (amp * torch.sin(2 * math.pi * cyc)).sum(2)
    return out.reshape(B, T * hop)
