"""Codecs: waveform <-> sequences of continuous, normalised frames.

One interface, three codecs:
- `harmonic`: weight-free harmonic-plus-noise analysis/synthesis (f0 lives in the frames).
- `partials`: the harmonic codec's frames plus a stretch coefficient and free sinusoidal
  partials, with a wider f0 search (model/partials.py).
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

    def _harmonic_sum(self, mag: torch.Tensor, f0_hz: torch.Tensor) -> torch.Tensor:
        """Salience of f0 candidates. mag [T, F], f0_hz [T, C] -> [T, C]."""
        bin_hz = self.sample_rate / self.ANALYSIS_FFT
        k = torch.arange(1, self.SEARCH_PARTIALS + 1, dtype=torch.float64)
        pos = f0_hz[..., None] * k / bin_hz                          # [T, C, P]
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

    def _note_f0(self, x: torch.Tensor, hint_hz: float | None, n_frames: int) -> float:
        """The note's nominal f0 in Hz: the hint (else a wide search), halved when the note
        sounds an octave below. A first look at (at most 32 of) the loud frames with a fixed
        window."""
        hop = self.hop
        e = F.pad(x**2, (1024, 1024 + hop)).unfold(0, 2048, hop)[:n_frames].sum(-1)
        loud_idx = torch.nonzero(e >= e.max() * 1e-2)[:, 0]
        loud_idx = loud_idx[torch.linspace(0, len(loud_idx) - 1, min(32, len(loud_idx))).long()]
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
    (the harmonic codec plus stretch and free partials: n_partials=16; see partials.py) or
    `encodec` (weights=PATH|None)."""
    if name == "harmonic":
        return HarmonicCodec(**kwargs)  # type: ignore[arg-type]
    if name == "partials":
        from pgesam_live.model.partials import PartialsCodec  # noqa: PLC0415

        return PartialsCodec(**kwargs)  # type: ignore[arg-type]
    if name == "encodec":
        return EncodecCodec(**kwargs)  # type: ignore[arg-type]
    raise CodecError(f"unknown codec {name!r}: choose one of {', '.join(CODEC_NAMES)}")
