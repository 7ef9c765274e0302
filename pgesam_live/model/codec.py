"""Codecs: waveform <-> sequences of continuous, normalised frames.

One interface, three codecs:
- `harmonic`: weight-free harmonic-plus-noise analysis/synthesis (f0 lives in the frames).
- `partials`: the harmonic codec's frames plus a stretch coefficient and free sinusoidal
  partials, with a wider f0 search.
- `encodec`: EnCodec 24 kHz's quantized continuous latent at 24 kbps (the authors' frames).

Shapes: wave [B, N] float32 at `sample_rate`; frames [B, T, D] float32, normalised.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from pgesam_live.errors import CodecError
from pgesam_live.model.torchaudio_stub import ensure_torchaudio_importable


class Codec(ABC):
    """Waveform <-> normalised frames. Subclasses set the four class attributes."""

    name: str
    sample_rate: int
    frame_rate_hz: float
    dim: int

    @abstractmethod
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, N] -> frames [B, T, D], normalised."""

    @abstractmethod
    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, D] -> wave [B, N]."""

    def to(self, device: torch.device | str) -> Codec:
        """Move any weights to `device`; weight-free codecs keep no state."""
        return self

    def frames_for(self, duration_s: float) -> int:
        """Number of frames in `duration_s` seconds of audio."""
        return int(round(duration_s * self.frame_rate_hz))


def _check_wave(wave: torch.Tensor, min_samples: int) -> torch.Tensor:
    if not isinstance(wave, torch.Tensor):
        wave = torch.as_tensor(wave)
    if wave.dim() == 1:
        raise CodecError(f"encode takes a batch [B, N], got shape {tuple(wave.shape)}: "
                         "use wave[None]")
    if wave.dim() != 2 or wave.shape[1] < min_samples:
        raise CodecError(f"encode takes wave [B, N] with N >= {min_samples}, "
                         f"got shape {tuple(wave.shape)}")
    return wave.float()


def _check_frames(frames: torch.Tensor, dim: int) -> torch.Tensor:
    if frames.dim() != 3 or frames.shape[-1] != dim or frames.shape[1] < 1:
        raise CodecError(f"decode takes frames [B, T, {dim}], got shape {tuple(frames.shape)}")
    return frames.float()


# --------------------------------------------------------------------------------------------
# harmonic: a weight-free harmonic-plus-noise codec
# --------------------------------------------------------------------------------------------

def _hz_to_mel(f_hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f_hz / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _median3(x: torch.Tensor) -> torch.Tensor:
    """3-point running median along the last axis, edges kept. x [..., T]."""
    if x.shape[-1] < 3:
        return x
    p = torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)
    return p.unfold(-1, 3, 1).median(dim=-1).values


class HarmonicCodec(Codec):
    """Harmonic-plus-noise frames at 24 kHz, 75 frames/s (hop 320): 300 frames for 4 s.

    Frame layout, D = 2 + n_harmonics + n_noise_bands (98 by default), all normalised by fixed
    affine maps (constants below, not data statistics) to roughly [0, 1]:
      [0]            pitch: (MIDI number of f0 - 20) / 100     (f0 lives in the frames)
      [1]            loudness: (dB of the summed harmonic amplitudes + 140) / 140
      [2 : 2+K]      harmonic distribution: amplitudes / their sum (sums to 1)
      [2+K : ]       noise: (dB of the noise power density in mel bands + 160) / 160
    Frame t describes the sound around sample t * hop. Decoding clamps every channel to its
    valid range and renormalises the distribution, so slightly-off generated frames still
    decode to sound; it never needs a pitch label.
    """

    name = "harmonic"
    sample_rate = 24000
    frame_rate_hz = 75.0
    hop = 320

    # Fixed normalisation constants (why: frames must mean the same thing for every data set).
    PITCH_OFFSET_MIDI = 20.0
    PITCH_SCALE_MIDI = 100.0
    PITCH_MIN_MIDI = 12.0      # 16 Hz; the decoder clamps f0 into [16 Hz, 12.5 kHz]
    PITCH_MAX_MIDI = 127.0
    LOUD_OFFSET_DB = 140.0
    LOUD_SCALE_DB = 140.0
    LOUD_MAX_DB = 20.0
    NOISE_OFFSET_DB = 160.0
    NOISE_SCALE_DB = 160.0
    NOISE_MAX_DB = 0.0

    # Analysis settings.
    ANALYSIS_FFT = 8192        # zero-padded FFT for fine peak positions
    PERIODS_PER_WINDOW = 6.0   # pitch-adaptive Hann window, clipped to [512, 2048] samples
    SEARCH_CENTS = 100.0       # per-frame f0 search around the note's nominal f0
    SEARCH_STEP_CENTS = 2.0
    SEARCH_PARTIALS = 8
    SEARCH_WEIGHT_POWER = 1.0  # partial k weighs 1 / k**power in the harmonic sum
    PEAK_HALF_WIDTH = 0.25     # harmonic peak search: k f0 +- 0.25 f0
    MASK_HALF_WIDTH = 0.45     # noise = residual outside found peaks +- 0.3..0.45 f0
    SUBOCTAVE_RATIO = 0.12     # half-integer partial energy above this share halves f0
    MIN_ENVELOPE_S = 0.005     # shortest loudness window (at least one period)
    MAX_ATTACK_GAIN = 10.0

    # Synthesis settings.
    TABLE_SIZE = 2048          # one wavetable per frame holds the K harmonics exactly
    NOISE_FFT = 640

    def __init__(self, n_harmonics: int = 64, n_noise_bands: int = 32) -> None:
        if n_harmonics < 1 or n_noise_bands < 2:
            raise CodecError("the harmonic codec needs n_harmonics >= 1 and n_noise_bands >= 2")
        if n_harmonics >= self.TABLE_SIZE // 4:
            raise CodecError(f"n_harmonics must be below {self.TABLE_SIZE // 4}")
        self.n_harmonics = n_harmonics
        self.n_noise_bands = n_noise_bands
        self.dim = 2 + n_harmonics + n_noise_bands
        nyq = self.sample_rate / 2
        edges_mel = torch.linspace(0.0, float(_hz_to_mel(torch.tensor(nyq))), n_noise_bands + 1,
                                   dtype=torch.float64)
        self._band_edges_hz = _mel_to_hz(edges_mel)                          # [B+1]
        self._band_centres_hz = 0.5 * (self._band_edges_hz[1:] + self._band_edges_hz[:-1])
        # Analysis: which band each bin of the long FFT falls into.
        bin_hz = torch.arange(self.ANALYSIS_FFT // 2 + 1, dtype=torch.float64) * (
            self.sample_rate / self.ANALYSIS_FFT)
        band = torch.bucketize(bin_hz, self._band_edges_hz[1:-1], right=True)
        self._analysis_band_onehot = F.one_hot(band, n_noise_bands).double()  # [F, B]
        # Synthesis: log-power interpolation from band centres to the noise STFT's bins.
        syn_hz = torch.arange(self.NOISE_FFT // 2 + 1, dtype=torch.float64) * (
            self.sample_rate / self.NOISE_FFT)
        self._noise_interp = self._interp_matrix(_hz_to_mel(syn_hz),
                                                 _hz_to_mel(self._band_centres_hz)).float()

    @staticmethod
    def _interp_matrix(x: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
        """Linear interpolation (flat beyond the ends) as a matrix [len(x), len(xp)]."""
        idx = torch.bucketize(x, xp).clamp(1, len(xp) - 1)
        x0, x1 = xp[idx - 1], xp[idx]
        a = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
        m = torch.zeros(len(x), len(xp), dtype=x.dtype)
        rows = torch.arange(len(x))
        m[rows, idx - 1] = 1.0 - a
        m[rows, idx] += a
        return m

    # ----------------------------------------------------------------------------- encode
    def encode(self, wave: torch.Tensor,
               f0_hint_hz: float | torch.Tensor | list[float] | None = None) -> torch.Tensor:
        """wave [B, N] at 24 kHz -> frames [B, N // 320, D], normalised.

        f0_hint_hz: optional nominal f0 per note (a float, or [B]) e.g. from the MIDI pitch;
        the per-frame f0 is then searched within +-100 cents of it (an organ stop sounding an
        octave below is still found). Without it the nominal f0 is estimated from the
        spectrum over 25 Hz..4.2 kHz.
        """
        x = _check_wave(wave, 4 * self.hop)
        hints: list[float | None]
        if f0_hint_hz is None:
            hints = [None] * x.shape[0]
        else:
            h = torch.as_tensor(f0_hint_hz, dtype=torch.float64).reshape(-1)
            if h.numel() == 1:
                h = h.expand(x.shape[0])
            if h.numel() != x.shape[0] or bool((h <= 0).any()):
                raise CodecError(f"f0_hint_hz must be one positive value or {x.shape[0]} "
                                 f"of them, got {f0_hint_hz}")
            hints = [float(v) for v in h]
        out = [self._encode_one(x[b].double().cpu(), hints[b]) for b in range(x.shape[0])]
        return torch.stack(out).to(wave.device)

    def _spectra(self, x: torch.Tensor, win_len: int, n_frames: int,
                 low_leakage: bool = False,
                 only: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N] -> (magnitudes [T, F] of the zero-padded long FFT, window [win_len]).

        Hann by default; `low_leakage` uses a 4-term Blackman-Harris window (sidelobes -92 dB)
        so the noise floor between harmonics is not buried under the harmonics' sidelobes."""
        if low_leakage:
            ph = 2 * math.pi * torch.arange(win_len, dtype=torch.float64) / (win_len - 1)
            window = (0.35875 - 0.48829 * torch.cos(ph) + 0.14128 * torch.cos(2 * ph)
                      - 0.01168 * torch.cos(3 * ph))
        else:
            window = torch.hann_window(win_len, periodic=False, dtype=torch.float64)
        pad = win_len // 2
        xp = F.pad(x, (pad, pad + self.hop))
        frames = xp.unfold(0, win_len, self.hop)[:n_frames]          # [T, L], centred at t*hop
        if only is not None:
            frames = frames[only]
        # float32 FFTs: twice as fast, and their ~-140 dB rounding floor is far below any
        # noise floor the codec models.
        spec = torch.fft.rfft((frames * window).float(), n=self.ANALYSIS_FFT)
        return spec.abs().double(), window

    def _harmonic_sum(self, mag: torch.Tensor, f0_hz: torch.Tensor,
                      factors: torch.Tensor | None = None) -> torch.Tensor:
        """Salience of f0 candidates. mag [T, F], f0_hz [T, C] -> [T, C]; partial k sought
        at k f0 (times factors[k-1] when given: a stretched grid)."""
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        k = torch.arange(1, self.SEARCH_PARTIALS + 1, dtype=torch.float64)
        pos = f0_hz[..., None] * (k if factors is None else k * factors) / bin_hz  # [T, C, P]
        valid = pos < mag.shape[-1] - 2
        pos = pos.clamp(max=mag.shape[-1] - 2)
        i0 = pos.floor().long()
        a = pos - i0
        rows = mag.expand(pos.shape[0], -1)
        v = (torch.gather(rows, 1, i0.flatten(1)).view_as(pos) * (1 - a)
             + torch.gather(rows, 1, (i0 + 1).flatten(1)).view_as(pos) * a)
        return (v * valid / k**self.SEARCH_WEIGHT_POWER).sum(-1)

    def _nominal_f0(self, mag: torch.Tensor, loud: torch.Tensor) -> float:
        """A note's f0 from the mean spectrum of its loud frames: harmonic sum, 25 Hz-4.2 kHz."""
        mean_mag = mag[loud].mean(0, keepdim=True)                   # [1, F]
        cand = 25.0 * 2.0 ** (torch.arange(0, 1200 * math.log2(4200 / 25), 5.0,
                                           dtype=torch.float64) / 1200)
        sal = self._harmonic_sum(mean_mag, cand[None])[0]
        return float(cand[int(sal.argmax())])

    def _suboctave(self, mag: torch.Tensor, loud: torch.Tensor, f0_hz: float) -> bool:
        """True when partials at half-integer multiples of f0 carry real energy (the note
        sounds an octave lower, e.g. a 16-foot organ stop)."""
        mean_mag = mag[loud].mean(0)
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        half = max(1, int(0.1 * f0_hz / bin_hz))

        def energy(mult: torch.Tensor, peak: bool = True) -> torch.Tensor:
            centre = (mult * f0_hz / bin_hz).round().long()
            centre = centre[centre + half < len(mean_mag)]
            idx = centre[:, None] + torch.arange(-half, half + 1)
            e = mean_mag[idx] ** 2
            return (e.amax(-1) if peak else e.amin(-1)).sum()

        k = torch.arange(1, self.SEARCH_PARTIALS + 1, dtype=torch.float64)
        half_partials = energy(k - 0.5)
        # Real sub-octave partials stand well above the floor between them (the minimum near
        # k - 1/4 and k - 3/4, clear of the partials' main lobes); breath or bow noise (a
        # choir, a low string) fills half-integer positions as evenly as the valleys.
        valleys = 0.5 * (energy(k - 0.25, peak=False) + energy(k - 0.75, peak=False))
        return bool(half_partials > self.SUBOCTAVE_RATIO * energy(k)) and bool(
            half_partials > 4.0 * valleys)

    def _encode_one(self, x: torch.Tensor, hint_hz: float | None) -> torch.Tensor:
        """x [N] float64 -> frames [T, D] float32.

        The steps are methods a subclass may replace (PartialsCodec does): `_note_f0`,
        `_track_f0`, `_partial_centres_hz`, `_harmonic_peaks`, `_harmonic_mask`, `_extra` and
        `_with_extra`; this class's own versions give its frames unchanged."""
        sr, hop = self.sample_rate, self.hop
        n_frames = len(x) // hop
        nyq = sr / 2
        bin_hz = sr / self.ANALYSIS_FFT
        f0_nom = self._note_f0(x, hint_hz, n_frames)

        win_len = int(min(2048, max(512, 2 * round(self.PERIODS_PER_WINDOW * sr / f0_nom / 2))))
        mag, window = self._spectra(x, win_len, n_frames)             # [T, F]
        f0 = self._track_f0(mag, f0_nom)                              # [T]
        fk = self._partial_centres_hz(mag, f0, f0_nom)                # [T, K]
        amp, peak_hz = self._harmonic_peaks(mag, window, fk, f0_nom)  # [T, K] each
        below = fk < nyq * 0.98
        amp = amp * below

        # Noise: residual power density away from the harmonic peaks actually found (so
        # stretched partials of pianos and bells are not counted as noise), averaged per mel
        # band, from a longer low-leakage window (~10 periods).
        noise_len = int(min(4096, max(1024, 2 * round(10 * sr / f0_nom / 2))))
        nmag, nwin = self._spectra(x, noise_len, n_frames, low_leakage=True)
        psd = nmag**2 / (nwin**2).sum()                               # white noise var -> var
        mask_hz = min(self.MASK_HALF_WIDTH * f0_nom,
                      max(0.3 * f0_nom, 4.5 * sr / noise_len))
        f_bins = torch.arange(mag.shape[-1], dtype=torch.float64) * bin_hz
        masked = self._harmonic_mask(f_bins, f0, peak_hz, below, mask_hz)
        extra = self._extra(mag, window, f0, peak_hz, amp, f0_nom)
        if extra is not None:
            masked |= extra["mask"]
            if "harmonic_keep" in extra:  # partials the extra analysis took over
                amp = amp * extra["harmonic_keep"]
        keep = (~masked).double()
        num = (psd * keep) @ self._analysis_band_onehot              # [T, B]
        cnt = keep @ self._analysis_band_onehot
        band_psd = num / cnt.clamp(min=1)
        band_psd = self._fill_empty_bands(band_psd, cnt > 0)

        # Attack: the long window smears onsets, so rescale each frame by the ratio of a short
        # (>= one period, >= 5 ms) RMS to the long window's RMS at the same centre.
        gain = self._attack_gain(x, window, f0_nom, n_frames)        # [T]
        amp = amp * gain[:, None]
        band_psd = band_psd * gain[:, None] ** 2

        K = self.n_harmonics
        total = amp.sum(-1)
        dist = (amp + 1e-12) / (total[:, None] + K * 1e-12)
        midi = 69.0 + 12.0 * torch.log2(f0 / 440.0)
        loud_db = 20.0 * torch.log10(total + 1e-12)
        noise_db = 10.0 * torch.log10(band_psd + 1e-20)
        frames = torch.cat([
            ((midi - self.PITCH_OFFSET_MIDI) / self.PITCH_SCALE_MIDI)[:, None],
            ((loud_db + self.LOUD_OFFSET_DB) / self.LOUD_SCALE_DB).clamp(min=0.0)[:, None],
            dist,
            ((noise_db + self.NOISE_OFFSET_DB) / self.NOISE_SCALE_DB).clamp(min=0.0),
        ], dim=-1)
        return self._with_extra(frames, extra, gain).float()

    def _loud_frames(self, x: torch.Tensor, n_frames: int, share: float = 1e-2,
                     count: int = 32) -> torch.Tensor:
        """Indices of (at most `count`, evenly spread) frames whose 2048-sample energy is
        within `share` of the note's loudest. x [N] -> [<= count]."""
        hop = self.hop
        e = F.pad(x**2, (1024, 1024 + hop)).unfold(0, 2048, hop)[:n_frames].sum(-1)
        loud_idx = torch.nonzero(e >= e.max() * share)[:, 0]
        return loud_idx[torch.linspace(0, len(loud_idx) - 1,
                                       min(count, len(loud_idx))).long()]

    def _note_f0(self, x: torch.Tensor, hint_hz: float | None, n_frames: int) -> float:
        """The note's nominal f0 in Hz: the hint (else a wide search), halved when the note
        sounds an octave below. A first look at (at most 32 of) the loud frames with a fixed
        window."""
        loud_idx = self._loud_frames(x, n_frames)
        mag = self._spectra(x, 2048, n_frames, only=loud_idx)[0]
        loud = torch.ones(len(loud_idx), dtype=torch.bool)
        f0_nom = hint_hz if hint_hz is not None else self._nominal_f0(mag, loud)
        if self._suboctave(mag, loud, f0_nom):
            f0_nom /= 2.0
        return min(max(f0_nom, 20.0), 5000.0)

    def _track_f0(self, mag: torch.Tensor, f0_nom: float) -> torch.Tensor:
        """Per-frame f0 [T] (Hz) from mag [T, F]: harmonic sum on a 2-cent grid within
        +-SEARCH_CENTS of the nominal f0, parabola, 3-frame median; quiet frames hold the
        note's median."""
        n_frames = mag.shape[0]
        c = torch.arange(-self.SEARCH_CENTS, self.SEARCH_CENTS + 1e-9, self.SEARCH_STEP_CENTS,
                         dtype=torch.float64)
        cand = f0_nom * 2.0 ** (c / 1200)
        sal = self._harmonic_sum(mag, cand.expand(n_frames, -1))      # [T, C]
        i = sal.argmax(-1).clamp(1, len(c) - 2)
        rows = torch.arange(n_frames)
        s0, s1, s2 = sal[rows, i - 1], sal[rows, i], sal[rows, i + 1]
        den = s0 - 2 * s1 + s2
        shift = torch.where(den < 0, 0.5 * (s0 - s2) / den.clamp(max=-1e-30), 0.0).clamp(-1, 1)
        f0 = f0_nom * 2.0 ** ((c[i] + shift * self.SEARCH_STEP_CENTS) / 1200)
        f0 = _median3(f0)
        # Quiet frames have no reliable pitch: hold the note's median so f0 stays smooth.
        frame_energy = (mag**2).sum(-1)
        voiced = frame_energy >= frame_energy.max() * 1e-4
        f0_fill = f0[voiced].median() if bool(voiced.any()) else torch.tensor(f0_nom)
        return torch.where(voiced, f0, f0_fill)

    def _partial_centres_hz(self, mag: torch.Tensor, f0: torch.Tensor,
                            f0_nom: float) -> torch.Tensor:
        """Where partial k is sought in each frame: k f0. f0 [T] -> [T, K]."""
        k = torch.arange(1, self.n_harmonics + 1, dtype=torch.float64)
        return f0[:, None] * k

    def _harmonic_peaks(self, mag: torch.Tensor, window: torch.Tensor, fk: torch.Tensor,
                        f0_nom: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinusoid amplitude and frequency (Hz) of partial k: the largest peak of mag [T, F]
        within fk [T, K] +- PEAK_HALF_WIDTH f0. -> ([T, K], [T, K])."""
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        n_frames, K = fk.shape
        r = int(math.ceil(self.PEAK_HALF_WIDTH * f0_nom / bin_hz))
        idx = (fk / bin_hz).round().long()[..., None] + torch.arange(-r, r + 1)
        idx = idx.clamp(0, mag.shape[-1] - 1)
        peak, arg = torch.gather(mag, 1, idx.flatten(1)).view(n_frames, K, 2 * r + 1).max(-1)
        peak_hz = torch.gather(idx, 2, arg[..., None])[..., 0].double() * bin_hz  # [T, K]
        return 2.0 * peak / window.sum(), peak_hz                    # sinusoid amplitude

    def _harmonic_mask(self, f_bins: torch.Tensor, f0: torch.Tensor, peak_hz: torch.Tensor,
                       below: torch.Tensor, mask_hz: float) -> torch.Tensor:
        """Bins [T, F] within mask_hz of a found partial (kept out of the noise estimate)."""
        K = self.n_harmonics
        nearest = (f_bins[None, :] / f0[:, None]).round().long()       # [T, F]
        masked = torch.zeros(len(f0), len(f_bins), dtype=torch.bool)
        for j in (-1, 0, 1):
            h = (nearest + j).clamp(1, K)
            fh = torch.gather(peak_hz, 1, h - 1)
            ok = torch.gather(below, 1, h - 1)
            masked |= ok & ((f_bins[None, :] - fh).abs() < mask_hz)
        return masked

    def _extra(self, mag: torch.Tensor, window: torch.Tensor, f0: torch.Tensor,
               peak_hz: torch.Tensor, amp: torch.Tensor,
               f0_nom: float) -> dict[str, torch.Tensor] | None:
        """What a subclass analyses beyond the harmonics: None here, else a dict holding at
        least `mask` [T, F] (bins kept out of the noise estimate) and optionally
        `harmonic_keep` [T, K] (a factor on the harmonic amplitudes)."""
        return None

    def _with_extra(self, frames: torch.Tensor, extra: dict[str, torch.Tensor] | None,
                    gain: torch.Tensor) -> torch.Tensor:
        """frames [T, 2 + K + B] -> the codec's frames [T, D] (here: unchanged)."""
        return frames

    @staticmethod
    def _fill_empty_bands(band: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Bands with no unmasked bin take the nearest lower (else higher) valid band.
        band, valid [T, B]."""
        n = band.shape[-1]
        ar = torch.arange(n).expand_as(band)
        lower = torch.where(valid, ar, -1).cummax(-1).values
        upper = torch.where(valid, ar, n).flip(-1).cummin(-1).values.flip(-1)
        src = torch.where(lower >= 0, lower, upper).clamp(0, n - 1)
        filled = torch.gather(band, 1, src)
        filled = torch.where(valid.any(-1, keepdim=True), filled, torch.zeros_like(band))
        return torch.where(valid, band, filled)

    def _attack_gain(self, x: torch.Tensor, window: torch.Tensor, f0_hz: float,
                     n_frames: int) -> torch.Tensor:
        """Short-window RMS / long-window RMS per frame [T] (1 in steady state)."""
        sr, hop = self.sample_rate, self.hop
        period = sr / f0_hz
        n_periods = max(1, math.ceil(self.MIN_ENVELOPE_S * sr / period))
        short = max(2, int(round(n_periods * period)))
        centres = torch.arange(n_frames) * hop
        x2 = x**2
        pad = max(short, len(window))
        c = torch.cat([torch.zeros(1, dtype=x.dtype), torch.cumsum(F.pad(x2, (pad, pad)), 0)])
        lo = centres + pad - short // 2
        e_short = (c[lo + short] - c[lo]) / short
        half = len(window) // 2
        frames = F.pad(x2, (half, half + hop)).unfold(0, len(window), hop)[:n_frames]
        e_long = (frames * window).sum(-1) / window.sum()
        ref = e_long.max()
        g = torch.sqrt(e_short / (e_long + ref * 1e-9 + 1e-30))
        return g.clamp(0.0, self.MAX_ATTACK_GAIN)

    TUNE_AUDIBLE_DB = 40.0  # tune(): frames within this many dB of the note's loudest count

    def tune(self, frames: torch.Tensor, pitches: torch.Tensor) -> torch.Tensor:
        """frames [B, T, D] (normalised), pitches [B] MIDI -> frames whose f0 track is shifted
        so that its median over the audible frames (within TUNE_AUDIBLE_DB of the note's
        loudest) is the key's, to the nearest octave. A new tensor; silent notes unchanged."""
        out = frames.clone()
        midi = frames[..., 0] * self.PITCH_SCALE_MIDI + self.PITCH_OFFSET_MIDI  # [B, T]
        loud = frames[..., 1] * self.LOUD_SCALE_DB
        key = pitches.to(frames.device, frames.dtype)
        for i in range(frames.shape[0]):
            audible = loud[i] >= loud[i].max() - self.TUNE_AUDIBLE_DB
            if not bool(audible.any()):
                continue
            off = float((midi[i][audible] - key[i]).median())
            shift = off - 12.0 * round(off / 12.0)
            out[i, :, 0] = frames[i, :, 0] - shift / self.PITCH_SCALE_MIDI
        return out

    DEBUZZ_ONSET_DB = 6.0  # debuzz(): a frame this much louder than the one before is an onset

    def debuzz(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, D] (normalised) -> frames whose loudness is smoothed over
        neighbouring frames ([1, 2, 1] / 4, in dB), except at onsets: a frame more than
        DEBUZZ_ONSET_DB louder than the one before it, and the frame before it, keep their
        loudness (an attack is not smeared ahead of itself). A new tensor."""
        out = frames.clone()
        if frames.shape[1] < 3:
            return out
        loud = frames[..., 1]
        pad = torch.cat([loud[:, :1], loud, loud[:, -1:]], dim=1)
        smooth = 0.25 * pad[:, :-2] + 0.5 * pad[:, 1:-1] + 0.25 * pad[:, 2:]
        rise = torch.zeros_like(loud, dtype=torch.bool)
        rise[:, 1:] = (loud[:, 1:] - loud[:, :-1]) * self.LOUD_SCALE_DB > self.DEBUZZ_ONSET_DB
        keep = rise.clone()
        keep[:, :-1] |= rise[:, 1:]
        out[..., 1] = torch.where(keep, loud, smooth)
        return out

    # ----------------------------------------------------------------------------- decode
    def unnormalise(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames [B, T, D] -> clamped physical parameters: f0_hz [B, T], amplitude [B, T, K]
        (per harmonic, zero above Nyquist), noise_psd [B, T, n_bands]."""
        K = self.n_harmonics
        midi = (frames[..., 0] * self.PITCH_SCALE_MIDI + self.PITCH_OFFSET_MIDI).clamp(
            self.PITCH_MIN_MIDI, self.PITCH_MAX_MIDI)
        f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
        loud_db = (frames[..., 1] * self.LOUD_SCALE_DB - self.LOUD_OFFSET_DB).clamp(
            max=self.LOUD_MAX_DB)
        total = 10.0 ** (loud_db / 20.0)
        dist = frames[..., 2:2 + K].clamp(min=0.0)
        dist = dist / (dist.sum(-1, keepdim=True) + 1e-8)
        k = torch.arange(1, K + 1, device=frames.device, dtype=frames.dtype)
        audible = (f0[..., None] * k < self.sample_rate / 2 * 0.98).to(frames.dtype)
        amp = total[..., None] * dist * audible
        noise_db = (frames[..., 2 + K:] * self.NOISE_SCALE_DB - self.NOISE_OFFSET_DB).clamp(
            max=self.NOISE_MAX_DB)
        return {"f0_hz": f0, "amplitude": amp, "noise_psd": 10.0 ** (noise_db / 10.0)}

    def decode(self, frames: torch.Tensor, seed: int | Sequence[int] = 0) -> torch.Tensor:
        """frames [B, T, D] -> wave [B, T * 320] at 24 kHz. Differentiable in the frames;
        deterministic for a seed (the noise comes from a seeded CPU generator; B seeds give
        each note its own, whatever else is in the batch)."""
        frames = _check_frames(frames, self.dim)
        p = self.unnormalise(frames)
        return self.synthesise(p["f0_hz"], p["amplitude"], p["noise_psd"], seed=seed)

    def decode_deterministic(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, D] -> the noise-free part of the decoded wave [B, T * hop]:
        deterministic and differentiable, for a training loss on decoded audio."""
        p = self.unnormalise(frames)
        return self.synthesise(p["f0_hz"], p["amplitude"], None)

    def synthesise(self, f0_hz: torch.Tensor, amplitude: torch.Tensor,
                   noise_psd: torch.Tensor | None, seed: int | Sequence[int] = 0) -> torch.Tensor:
        """Physical parameters -> wave [B, T * hop].

        f0_hz [B, T]; amplitude [B, T, K] per harmonic; noise_psd [B, T, n_bands] (variance of
        white noise with that density), or None for the harmonic part alone (a training loss
        on decoded audio: deterministic and differentiable). Harmonics: one wavetable per
        frame (an inverse FFT of the K amplitudes), read at a phase that integrates the
        per-sample f0, crossfaded linearly between neighbouring frames (= linear amplitude
        interpolation per harmonic).
        """
        B, T, K = amplitude.shape
        hop, M = self.hop, self.TABLE_SIZE
        n = T * hop
        dev, dt = amplitude.device, amplitude.dtype
        # Frame t sits at sample t*hop; the last frame is held to the end.
        f0_ext = torch.cat([f0_hz, f0_hz[:, -1:]], dim=1)                    # [B, T+1]
        amp_ext = torch.cat([amplitude, amplitude[:, -1:]], dim=1)          # [B, T+1, K]
        a = (torch.arange(hop, device=dev, dtype=dt) / hop)                 # [hop]
        f0_s = (f0_ext[:, :-1, None] * (1 - a) + f0_ext[:, 1:, None] * a).reshape(B, n)
        # Phase in cycles, accumulated in float64 and wrapped, so high harmonics stay clean
        # over the whole note.
        cyc = torch.cumsum(f0_s.double() / self.sample_rate, dim=1)
        cyc = torch.cat([torch.zeros(B, 1, dtype=cyc.dtype, device=dev), cyc[:, :-1]], dim=1)
        phase = (cyc - torch.floor(cyc)).to(dt)                              # [B, N] in [0, 1)
        spec = torch.zeros(B, T + 1, M // 2 + 1, dtype=torch.complex64 if dt == torch.float32
                           else torch.complex128, device=dev)
        spec[..., 1:K + 1] = amp_ext.to(spec.dtype) * (-0.5j * M)
        tables = torch.fft.irfft(spec, n=M, dim=-1)                          # [B, T+1, M]
        pos = phase * M
        i0 = pos.floor().long().clamp(0, M - 1)
        frac = pos - i0.to(dt)
        i1 = (i0 + 1) % M
        frame_idx = (torch.arange(n, device=dev) // hop).expand(B, n)
        flat = tables.reshape(B, -1)
        base0 = frame_idx * M
        base1 = base0 + M

        def read(base: torch.Tensor) -> torch.Tensor:
            v0 = torch.gather(flat, 1, base + i0)
            v1 = torch.gather(flat, 1, base + i1)
            return v0 + (v1 - v0) * frac

        a_s = a.repeat(T)[None]                                              # [1, N]
        harmonic = read(base0) * (1 - a_s) + read(base1) * a_s
        if noise_psd is None:
            return harmonic
        return harmonic + self._noise(noise_psd, n, seed)

    def _noise(self, noise_psd: torch.Tensor, n: int, seed: int | Sequence[int]) -> torch.Tensor:
        """Band noise: white noise shaped per STFT frame by the interpolated band envelope."""
        B, T, _ = noise_psd.shape
        dev, dt = noise_psd.device, noise_psd.dtype
        if isinstance(seed, int):
            gen = torch.Generator().manual_seed(int(seed))
            white = torch.randn(B, n, generator=gen, dtype=torch.float32).to(dev, dt)
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != B:
                raise CodecError(f"decode: {len(seeds)} seeds for {B} notes")
            white = torch.stack([torch.randn(n, generator=torch.Generator().manual_seed(s),
                                             dtype=torch.float32) for s in seeds]).to(dev, dt)
        window = torch.hann_window(self.NOISE_FFT, device=dev, dtype=dt)
        spec = torch.stft(white, self.NOISE_FFT, hop_length=self.hop, window=window,
                          center=True, return_complex=True)                  # [B, F, T+1]
        log_psd = torch.log(noise_psd.clamp(min=1e-30))
        log_psd = torch.cat([log_psd, log_psd[:, -1:]], dim=1)              # [B, T+1, bands]
        shape = torch.exp(0.5 * log_psd @ self._noise_interp.to(dev, dt).T)  # [B, T+1, F]
        spec = spec * shape.transpose(1, 2)
        return torch.istft(spec, self.NOISE_FFT, hop_length=self.hop, window=window,
                           center=True, length=n)


# --------------------------------------------------------------------------------------------
# partials: the harmonic codec plus what a harmonic grid drops
# --------------------------------------------------------------------------------------------
# The `partials` codec: the harmonic codec plus what a harmonic grid drops.
#
# HarmonicCodec forces every sound onto one harmonic grid around the key's f0. PartialsCodec keeps
# its 98 channels (same meaning, same normalisation) and adds:
# - a stretch coefficient B per frame: partial k sounds at k f0 sqrt((1 + B k^2) / (1 + B))
#   (a stiff string: piano, harp, bass; partial 1 stays at f0);
# - a small set of free sinusoidal partials per frame, each a frequency ratio to f0 and a level
#   (bells, bars, the glockenspiel's 2.74 / 5.31 partials, a detuned second voice);
# and finds f0 differently:
# - a common fundamental for dyads: when partials sit at thirds (or quarters) of the key's f0 (a
#   fifth or fourth below, a fifths lead), f0 is that common fundamental, and both voices are
#   harmonics of it; an octave below (16-foot organ stops) as before;
# - a wide per-frame search (+-SEARCH_CENTS) on compressed magnitudes with a Gaussian prior
#   around the nominal f0 instead of a hard +-100-cent window, and a frame whose best candidate is
#   still on the search's edge is treated as unvoiced (it holds the note's median): f0 is never
#   pinned to the edge.
#
# Shapes: wave [B, N] at 24 kHz; frames [B, T, D], T = N // 320 (75 frames/s).


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
        loud_idx = self._loud_frames(x, n_frames)
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
        """The harmonic sum on a stretched grid (B = stretch); mag [T, F] already
        compressed, f0_hz [T, C] -> [T, C]."""
        b = torch.tensor(stretch, dtype=torch.float64)
        return self._harmonic_sum(mag, f0_hz, self._stretch_factors(b, self.SEARCH_PARTIALS))

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
        loud_idx = self._loud_frames(x, n_frames, share=1e-1, count=16)
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


# --------------------------------------------------------------------------------------------
# encodec: EnCodec 24 kHz's quantized continuous latent
# --------------------------------------------------------------------------------------------

ENCODEC_CHECKPOINT = "encodec_24khz-d7cc33bc.th"


def _import_encodec():  # type: ignore[no-untyped-def]
    """Import the `encodec` package. Its utils.py and msstftd.py import torchaudio at module
    level, but the 24 kHz model never calls it (see torchaudio_stub)."""
    ensure_torchaudio_importable()
    try:
        import encodec  # noqa: PLC0415
    except ImportError as e:
        raise CodecError(f"the encodec package is missing ({e}): "
                         "pip install --no-deps encodec") from e
    return encodec


def _repo_root() -> Path:
    import pgesam_live  # noqa: PLC0415

    return Path(pgesam_live.__file__).resolve().parents[1]


def encodec_weight_places() -> list[Path]:
    """Where official EnCodec weights are looked up, in order: the repository's
    checkpoints/ folder, then torch's hub cache."""
    return [_repo_root() / "checkpoints" / ENCODEC_CHECKPOINT,
            Path(torch.hub.get_dir()) / "checkpoints" / ENCODEC_CHECKPOINT]


class EncodecCodec(Codec):
    """EnCodec 24 kHz: frames are the quantized continuous latent at 24 kbps (sum of the 32
    codebook vectors), 128-d at 75 Hz, normalised as the pGESAM authors did:
    e' = (e + 25) / 58.5. Decoding runs EnCodec's decoder straight on the de-normalised frames
    (no re-quantisation), so generated frames need not lie on the codebooks."""

    name = "encodec"
    sample_rate = 24000
    frame_rate_hz = 75.0
    dim = 128
    hop = 320
    NORM_OFFSET = 25.0
    NORM_SCALE = 58.5
    BANDWIDTH_KBPS = 24.0

    def __init__(self, weights: str | Path | None = None) -> None:
        if weights is None:
            places = encodec_weight_places()
            found = [p for p in places if p.is_file()]
            if not found:
                raise CodecError(f"EnCodec weights not found: put {ENCODEC_CHECKPOINT} at "
                                 f"{places[0]} or {places[1]} (this program never downloads)")
            path = found[0]
        else:
            path = Path(weights)
            if not path.is_file():
                raise CodecError(f"EnCodec weights file {path} does not exist: pass the path "
                                 f"of {ENCODEC_CHECKPOINT}")
        encodec = _import_encodec()
        model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:  # a damaged or foreign file: name it
            raise CodecError(f"cannot load EnCodec weights from {path} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:120]}): replace the file") from e
        model.set_target_bandwidth(self.BANDWIDTH_KBPS)
        model.eval()
        self.model = model
        self.weights_path = path

    def to(self, device: torch.device | str) -> EncodecCodec:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, N] at 24 kHz -> frames [B, ceil(N / 320), 128], normalised."""
        x = _check_wave(wave, self.hop).to(self.device)
        emb = self.model.encoder(x[:, None, :])                          # [B, 128, T]
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.BANDWIDTH_KBPS)
        q = self.model.quantizer.decode(codes)                            # [B, 128, T]
        return ((q + self.NORM_OFFSET) / self.NORM_SCALE).transpose(1, 2).contiguous()

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 128] -> wave [B, T * 320]. Differentiable (no torch.no_grad here, so a
        training loss may use it; wrap calls in no_grad for inference)."""
        f = _check_frames(frames, self.dim).to(self.device)
        emb = f.transpose(1, 2) * self.NORM_SCALE - self.NORM_OFFSET
        out = self.model.decoder(emb)[:, 0]                                # [B, >= T*320]
        return out[:, : f.shape[1] * self.hop]


CODEC_NAMES = ("harmonic", "partials", "encodec")


def get_codec(name: str, **kwargs: object) -> Codec:
    """Build a codec by name: `harmonic` (n_harmonics=64, n_noise_bands=32), `partials`
    (the harmonic codec plus stretch and free partials: n_partials=16) or
    `encodec` (weights=PATH|None)."""
    if name == "harmonic":
        return HarmonicCodec(**kwargs)  # type: ignore[arg-type]
    if name == "partials":
        return PartialsCodec(**kwargs)  # type: ignore[arg-type]
    if name == "encodec":
        return EncodecCodec(**kwargs)  # type: ignore[arg-type]
    raise CodecError(f"unknown codec {name!r}: choose one of {', '.join(CODEC_NAMES)}")
