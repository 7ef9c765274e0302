"""Audio metrics shared by the codec checks, the evaluation and the benchmarks.

- `mrstft_distance`: the multi-resolution log-STFT distance of the foundation issue.
- `track_pitch`: one fine f0 per note (YIN with parabolic interpolation, median of the
  loud, sustained frames): resolves a few cents on clean tones, but reads inharmonic or
  two-voice sounds (bars, a fifths lead) erratically.
- `track_pitch_pesto`: one f0 per note by PESTO (pesto-pitch, a learned pitch estimator that
  reads the perceived pitch of such sounds steadily; about 1/3-semitone fine on clean tones):
  for the 50-cent tests, not for the median in cents.
- `cents`: interval between two frequencies.
- `half_peak_time_s`: when a note's short-time envelope first reaches half its peak.
- `release_envelope_db` / `release_error_db`: a note's level over the 300 ms after its
  note-off, re its level just before it; the largest difference of two such envelopes (the
  held-note issue's release figure: `eval`'s `release_db`, `bench`'s `release_err_*`).

Inputs are 1-D float arrays (numpy or torch) at `sample_rate`; outputs are Python floats.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from pgesam_live.errors import CodecError

MRSTFT_FFT_SIZES = (512, 1024, 2048)
MRSTFT_FLOOR = 1e-5
MRSTFT_PEAK = 0.9


def _as_numpy(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any 1-D array-like -> float64 numpy [N]."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(wave, dtype=np.float64)
    if arr.ndim != 1:
        raise CodecError(f"expected a 1-D waveform, got shape {tuple(arr.shape)}: pass one note")
    return arr


def _log_mag(wave: torch.Tensor, n_fft: int) -> torch.Tensor:
    """wave [N] float64 -> ln(|STFT| / sum(window) + floor) [F, frames]."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(wave, n_fft, hop_length=n_fft // 4, window=window, center=True,
                      pad_mode="constant", return_complex=True)
    return torch.log(spec.abs() / window.sum() + MRSTFT_FLOOR)


def mrstft_distance(ref: np.ndarray | torch.Tensor, est: np.ndarray | torch.Tensor) -> float:
    """Multi-resolution STFT distance between a reference note and an estimate.

    ref, est: [N] (the longer one is cut to the shorter). The reference is scaled to peak 0.9
    and the estimate by the same gain, so level errors count but the recording level does not.
    Hann window, FFT 512/1024/2048, hop n/4, centred (zero padded), magnitudes divided by the
    window's sum; the distance is mean |ln(|X| + 1e-5) - ln(|Y| + 1e-5)| over bins, frames and
    the three sizes. Identical signals give 0; the same note from two soundfonts is ~0.7.
    """
    r = _as_numpy(ref)
    e = _as_numpy(est)
    n = min(len(r), len(e))
    if n < max(MRSTFT_FFT_SIZES) // 2:
        raise CodecError(f"waveforms of {n} samples are too short for the MR-STFT distance: "
                         f"pass at least {max(MRSTFT_FFT_SIZES) // 2} samples")
    peak = float(np.max(np.abs(r[:n])))
    if peak <= 0.0:
        raise CodecError("the reference waveform is silent: MR-STFT needs a sounding reference")
    gain = MRSTFT_PEAK / peak
    rt = torch.from_numpy(r[:n] * gain)
    et = torch.from_numpy(e[:n] * gain)
    dists = [float((_log_mag(rt, n_fft) - _log_mag(et, n_fft)).abs().mean())
             for n_fft in MRSTFT_FFT_SIZES]
    return float(np.mean(dists))


def cents(a_hz: float, b_hz: float) -> float:
    """Interval from b to a in cents (positive when a is higher)."""
    if a_hz <= 0 or b_hz <= 0:
        raise CodecError(f"cents needs positive frequencies, got {a_hz} and {b_hz}")
    return 1200.0 * math.log2(a_hz / b_hz)


def _frame_rms(wave: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Centred frame RMS [frames], frames aligned with librosa's centred framing."""
    padded = np.pad(wave, (frame_length // 2, frame_length // 2))
    c = np.concatenate([[0.0], np.cumsum(padded**2)])
    n_frames = 1 + (len(wave)) // hop_length
    starts = np.arange(n_frames) * hop_length
    ends = np.minimum(starts + frame_length, len(padded))
    return np.sqrt(np.maximum(c[ends] - c[starts], 0.0) / frame_length)


def track_pitch(wave: np.ndarray | torch.Tensor, sample_rate: int, fmin_hz: float = 30.0,
                fmax_hz: float = 2000.0) -> float:
    """One f0 for a note, in Hz, fine enough to resolve a few cents.

    wave [N]. YIN (librosa, parabolic interpolation) on frames hopped by 5 ms; the estimate is
    the median over the sustained part: frames after the envelope first reaches half its peak
    (+30 ms, past the attack transient) whose RMS is within 20 dB of the peak.
    """
    x = _as_numpy(wave)
    if fmin_hz <= 0 or fmax_hz <= fmin_hz or fmax_hz >= sample_rate / 2:
        raise CodecError(f"track_pitch needs 0 < fmin_hz < fmax_hz < {sample_rate / 2}, "
                         f"got {fmin_hz}, {fmax_hz}")
    f0, rms = _yin(x, sample_rate, fmin_hz, fmax_hz)
    coarse = _sustained_median(f0, rms, sample_rate)
    # YIN's parabolic interpolation is biased by a few cents when a period spans only a few
    # samples: refine around the coarse estimate on a signal upsampled to >= 48 samples/period.
    up = min(8, math.ceil(48.0 * coarse / sample_rate))
    if up > 1:
        from scipy.signal import resample_poly  # noqa: PLC0415

        xu = resample_poly(x, up, 1)
        f0, rms = _yin(xu, sample_rate * up, coarse / 1.25, min(coarse * 1.25,
                                                                 sample_rate * up / 2 - 1))
        return _sustained_median(f0, rms, sample_rate * up)
    return coarse


def _yin(x: np.ndarray, sample_rate: int, fmin_hz: float,
         fmax_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame f0 [frames] by YIN (hop 5 ms) and the frames' RMS [frames]."""
    import librosa  # noqa: PLC0415  (slow import; only metrics callers pay for it)

    # YIN needs two periods of the lowest pitch in a frame.
    frame_length = 1 << int(math.ceil(math.log2(max(1024, 2 * sample_rate / fmin_hz + 4))))
    if len(x) < frame_length:
        raise CodecError(f"a {len(x)}-sample note is too short to track pitch down to "
                         f"{fmin_hz} Hz: pass at least {frame_length} samples or raise fmin_hz")
    hop = max(1, sample_rate // 200)
    f0 = librosa.yin(x, fmin=fmin_hz, fmax=fmax_hz, sr=sample_rate, frame_length=frame_length,
                     hop_length=hop, center=True)
    return f0, _frame_rms(x, frame_length, hop)[: len(f0)]


def _sustained_median(f0: np.ndarray, rms: np.ndarray, sample_rate: int,
                      hop: int | None = None) -> float:
    """Median f0 over frames after the attack (half peak + 30 ms) within 20 dB of the peak.
    f0, rms [frames] hopped by `hop` samples (5 ms by default)."""
    hop = hop or max(1, sample_rate // 200)
    peak = float(rms.max())
    if peak <= 0.0:
        raise CodecError("cannot track the pitch of a silent waveform")
    start = int(np.argmax(rms >= 0.5 * peak)) + int(round(0.03 * sample_rate / hop))
    keep = np.zeros(len(f0), dtype=bool)
    keep[start:] = True
    keep &= rms >= peak * 10 ** (-20 / 20)
    if not keep.any():  # a very short blip: use every loud frame
        keep = rms >= peak * 10 ** (-20 / 20)
    return float(np.median(f0[keep]))


PESTO_MODEL = "mir-1k_g7"   # the checkpoint shipped inside the pesto-pitch wheel
PESTO_STEP_MS = 10.0


@functools.lru_cache(maxsize=4)
def _pesto(sample_rate: int):  # type: ignore[no-untyped-def]
    """The PESTO model for `sample_rate` (loaded once; its weights ship in the wheel)."""
    from pgesam_live.model.torchaudio_stub import ensure_torchaudio_importable  # noqa: PLC0415

    ensure_torchaudio_importable()  # pesto.core imports torchaudio only to read files
    try:
        from pesto.loader import load_model  # noqa: PLC0415
    except ImportError as e:
        raise CodecError(f"the pitch tracker pesto-pitch is missing ({e}): run `make setup`, or "
                         "pip install omegaconf && pip install --no-deps pesto-pitch==2.0.1") from e
    return load_model(PESTO_MODEL, step_size=PESTO_STEP_MS, sampling_rate=sample_rate).eval()


def track_pitch_pesto(wave: np.ndarray | torch.Tensor, sample_rate: int) -> float:
    """One f0 for a note, in Hz, by PESTO (Riou et al., ISMIR 2023), on the same sustained
    frames as `track_pitch` (after the attack, within 20 dB of the peak).

    wave [N] (at least 0.1 s). PESTO reads the pitch a listener names for sounds where YIN
    jumps between partials (glockenspiel bars, a lead playing root and fifth), which is what a
    50-cent test needs; it is not fine enough for medians in cents (use `track_pitch`).
    """
    x = _as_numpy(wave)
    hop = int(round(sample_rate * PESTO_STEP_MS / 1000))
    if len(x) < 10 * hop:
        raise CodecError(f"a {len(x)}-sample note is too short to track: pass at least "
                         f"{10 * hop} samples")
    with torch.inference_mode():
        semitones = _pesto(sample_rate)(torch.from_numpy(x).float(), sr=sample_rate,
                                        convert_to_freq=False)[0]
    pred = semitones.reshape(-1).double().numpy()
    rms = _frame_rms(x, 4 * hop, hop)[: len(pred)]
    midi = _sustained_median(pred[: len(rms)], rms, sample_rate, hop)
    return float(440.0 * 2.0 ** ((midi - 69.0) / 12.0))


def envelope(wave: np.ndarray | torch.Tensor, sample_rate: int,
             window_s: float = 0.001) -> np.ndarray:
    """Centred short-time RMS envelope [N] over `window_s` (1 ms by default)."""
    x = _as_numpy(wave)
    w = max(1, int(round(window_s * sample_rate)))
    padded = np.pad(x, (w // 2, w - w // 2))
    c = np.concatenate([[0.0], np.cumsum(padded**2)])
    return np.sqrt(np.maximum(c[w:w + len(x)] - c[: len(x)], 0.0) / w)


def half_peak_time_s(wave: np.ndarray | torch.Tensor, sample_rate: int,
                     window_s: float = 0.001) -> float:
    """Seconds from the start until the 1 ms RMS envelope first reaches half its peak."""
    env = envelope(wave, sample_rate, window_s)
    peak = float(env.max())
    if peak <= 0.0:
        raise CodecError("cannot time the attack of a silent waveform")
    return float(np.argmax(env >= 0.5 * peak)) / sample_rate


# -- what the map changes: the sound figures of the timbre map -----------------------------------
BAND_FFT = 2048
BAND_HOP = 1024
N_BANDS = 48
BAND_MIN_HZ = 40.0
SPEC_FLOOR_DB = -80.0      # log-band spectrogram: levels re the note's loudest cell, floored
ENVELOPE_FLOOR_DB = -60.0  # level envelope: dB re the note's peak, floored
ENVELOPE_TIMES_S = (0.5, 1.5, 2.5)
ENVELOPE_WINDOW_S = 0.05


@functools.lru_cache(maxsize=4)
def _band_matrix(sample_rate: int) -> np.ndarray:
    """[N_BANDS, F] triangle-free rectangular bands, log-spaced from 40 Hz to Nyquist."""
    nyq = sample_rate / 2
    edges = np.geomspace(BAND_MIN_HZ, nyq, N_BANDS + 1)
    freqs = np.fft.rfftfreq(BAND_FFT, 1.0 / sample_rate)
    m = np.zeros((N_BANDS, len(freqs)))
    for b in range(N_BANDS):
        sel = (freqs >= edges[b]) & (freqs < edges[b + 1])
        if not sel.any():  # a band narrower than a bin takes its nearest bin
            sel = np.abs(freqs - np.sqrt(edges[b] * edges[b + 1])) == np.min(
                np.abs(freqs - np.sqrt(edges[b] * edges[b + 1])))
        m[b, sel] = 1.0 / sel.sum()
    return m


def _power_frames(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    """Power spectra [frames, BAND_FFT // 2 + 1] (Hann BAND_FFT, hop BAND_HOP; a note shorter
    than one window is zero-padded to one)."""
    x = _as_numpy(wave)
    if len(x) < BAND_FFT:
        x = np.pad(x, (0, BAND_FFT - len(x)))
    n = 1 + (len(x) - BAND_FFT) // BAND_HOP
    idx = np.arange(BAND_FFT)[None, :] + BAND_HOP * np.arange(n)[:, None]
    return np.abs(np.fft.rfft(x[idx] * np.hanning(BAND_FFT), axis=1)) ** 2


def log_band_spectrogram(wave: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """A note's log-band spectrogram: [N_BANDS, frames] in dB re its loudest cell, floored at
    SPEC_FLOOR_DB (levels normalised: a note and the same note 10 dB quieter are identical).
    Hann 2048, hop 1024, 48 log-spaced bands from 40 Hz."""
    bands = _band_matrix(sample_rate) @ _power_frames(wave).T  # [N_BANDS, frames]
    db = 10.0 * np.log10(bands + 1e-20)
    db -= db.max()
    return np.maximum(db, SPEC_FLOOR_DB)


def spectrogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| (dB) of two log-band spectrograms, cut to the shorter one."""
    n = min(a.shape[1], b.shape[1])
    return float(np.abs(a[:, :n] - b[:, :n]).mean())


def levels_db(wave: np.ndarray | torch.Tensor, sample_rate: int,
              times_s: tuple[float, ...] = ENVELOPE_TIMES_S,
              window_s: float = ENVELOPE_WINDOW_S) -> np.ndarray:
    """RMS level over `window_s` centred at each time, in dB re the note's peak level (the
    loudest such window), floored at ENVELOPE_FLOOR_DB: [len(times_s)]."""
    x = _as_numpy(wave)
    w = max(1, int(round(window_s * sample_rate)))
    c = np.concatenate([[0.0], np.cumsum(x ** 2)])
    rms = np.sqrt(np.maximum(c[w:] - c[:-w], 0.0) / w)  # window starting at each sample
    peak = float(rms.max()) if len(rms) else 0.0
    if peak <= 0.0:
        return np.full(len(times_s), ENVELOPE_FLOOR_DB)
    out = []
    for t in times_s:
        i = int(round(t * sample_rate)) - w // 2
        i = min(max(i, 0), len(rms) - 1)
        out.append(20.0 * np.log10(max(rms[i], 1e-12) / peak))
    return np.maximum(np.array(out), ENVELOPE_FLOOR_DB)


def envelope_error_db(ref: np.ndarray | torch.Tensor, est: np.ndarray | torch.Tensor,
                      sample_rate: int) -> float:
    """Mean |level(est) - level(ref)| in dB at ENVELOPE_TIMES_S (levels re each note's own
    peak, floored at -60 dB): 0 for the same envelope at any gain."""
    return float(np.abs(levels_db(est, sample_rate) - levels_db(ref, sample_rate)).mean())


RELEASE_COMPARE_S = 0.3  # release_envelope_db's span after the note-off
RELEASE_FLOOR_DB = -60.0
RELEASE_HOP_S = 0.01
RELEASE_WIN_S = 0.02


def level_db(x: np.ndarray) -> float:
    """RMS level of x in dB re full scale (-200 for silence)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return -200.0
    return float(10.0 * np.log10(np.mean(x * x) + 1e-20))


def release_envelope_db(x: np.ndarray | torch.Tensor, off: int, sample_rate: int,
                        span_s: float = RELEASE_COMPARE_S) -> np.ndarray:
    """The level after a note-off at sample `off` of x [N], in dB re the level over the
    RELEASE_WIN_S before it, every RELEASE_HOP_S for span_s (RELEASE_WIN_S windows, floored
    at RELEASE_FLOOR_DB): float64 [round(span_s / RELEASE_HOP_S)]."""
    x = _as_numpy(x).astype(np.float64)
    hop = int(round(RELEASE_HOP_S * sample_rate))
    win = int(round(RELEASE_WIN_S * sample_rate))
    ref = level_db(x[max(0, off - win): off])
    n = int(round(span_s / RELEASE_HOP_S))
    lev = np.array([level_db(x[off + i * hop: off + i * hop + win]) for i in range(n)])
    return np.maximum(lev - ref, RELEASE_FLOOR_DB)


def release_error_db(ref: np.ndarray | torch.Tensor, est: np.ndarray | torch.Tensor,
                     sample_rate: int, off_s: float) -> float | None:
    """Largest |dB| difference of `est`'s and `ref`'s release envelopes (release_envelope_db)
    after a note-off at off_s: 0 for the same release at any gain. None when either note ends
    before the RELEASE_COMPARE_S after the note-off are over."""
    off = int(round(off_s * sample_rate))
    need = off + int(round((RELEASE_COMPARE_S + RELEASE_WIN_S) * sample_rate))
    if min(len(ref), len(est)) < need or off <= 0:
        return None
    return float(np.max(np.abs(release_envelope_db(est, off, sample_rate)
                               - release_envelope_db(ref, off, sample_rate))))


def spectral_centroid_hz(wave: np.ndarray | torch.Tensor, sample_rate: int) -> float:
    """Power-weighted mean frequency over the whole note (Hann 2048, hop 1024)."""
    spec = _power_frames(wave)
    freqs = np.fft.rfftfreq(BAND_FFT, 1.0 / sample_rate)
    total = float(spec.sum())
    if total <= 0.0:
        return 0.0
    return float((spec * freqs).sum() / total)


def identity_key(instrument_name: str) -> str:
    """What counts as one instrument for `identity_nn`: a General MIDI program rendered from
    two banks (`fluidr3_gm_004`, `musescore_general_004`) is one ('gm004'); other names are
    themselves."""
    import re

    m = re.fullmatch(r".+_(\d{3})", instrument_name)
    return f"gm{m.group(1)}" if m else instrument_name


def nearest_is_own(query: np.ndarray, own_key: str, candidates: list[tuple[str, np.ndarray]]
                   ) -> bool:
    """Whether the candidate (key, log-band spectrogram) nearest to `query` has `own_key`."""
    if not candidates:
        return False
    d = [spectrogram_distance(query, spec) for _, spec in candidates]
    return candidates[int(np.argmin(d))][0] == own_key
