"""Held notes of any length, as samplers make them: a rendered note's sustain looped, its own
release played when the key is let go.

The model renders every note held for `NOTE_HOLD_S` (3 s) and then released (its data set's
notes were), and is not conditioned on the hold time. `Sustain.analyse(note)` finds a loop in
the steady part before that release: the loop end a little before the release onset, the loop
start where the waveform around it best matches the waveform around the end (normalised
cross-correlation over two pitch periods, every lag of a window 0.3-1.2 s long: so the seam
falls on a pitch-period boundary), and a crossfade whose gains are corrected for the measured
correlation (a linear fade for coherent material, an equal-power one for noise: no dip either
way). A sound that decays in its steady part (a piano, a plucked string) is flattened inside
the loop and the measured decay goes on while it is held: decaying sounds simply decay, down
to silence. A note with no steady part left (decayed to silence before the release) has no
loop and plays as rendered.

A held note's samples are a pure function of the sample index since its onset
(`Sustain.render(n0, count)`), so a voice writes them ahead in small pieces and can rewrite
from any earlier sample: on release (`release_material`: a correlation-aligned crossfade into
the rendered release segment, scaled to the level playing at that moment) or when the timbre
moves (`Playhead.follow`: a crossfade into another point's sustain at the same place).

Shapes: audio float32 [N] mono at the note's `sample_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import correlate

from pgesam_live.errors import ConfigError
from pgesam_live.model.metrics import RELEASE_COMPARE_S, level_db, release_envelope_db

HOLD_S = 3.0             # the render's hold before its release (model/soundfont.NOTE_HOLD_S)
HOLD_FRACTION = 0.75     # ... of its 4 s: a note re-pitched (longer or shorter) keeps it
LOOP_MIN_S = 0.3
LOOP_MAX_S = 1.2
STEADY_FROM_S = 0.6      # the loop lies after the attack ...
LOOP_END_MARGIN_S = 0.06  # ... and ends this long before the release onset
SEAM_WINDOW_PERIODS = 2.0
SEAM_WINDOW_MIN_S = 0.006
LOOP_XFADE_S = 0.08      # at most; a quarter of the loop when it is shorter
RELEASE_XFADE_S = 0.006  # key up -> the release segment, centred on its onset
FOLLOW_XFADE_S = 0.08    # one point's sustain -> another's (timbre following the point)
DECAY_MIN_DB_PER_S = 3.0  # a steadier level than this is a sustaining sound (a bowed
# string's swell measures up to 2 dB/s over a second; a piano's or guitar's decay 7-15)
SILENT_DB = -100.0       # a decaying held note ends here (re its loop level)
NO_LOOP_BELOW_DB = -60.0  # a note this far below its peak at the loop end is not looped
# ... nor one this far below it whose level has stopped falling there: what is left of a
# struck sound after it decayed (a floor of residue), which a loop would hum on for ever.
NO_LOOP_FLAT_BELOW_DB = -40.0
END_FADE_S = 0.005       # the last samples of a release, faded (a render's edge never clicks)
ENV_HOP_S = 0.01
ENV_WIN_S = 0.02


def envelope_db(x: np.ndarray, sample_rate: int, hop_s: float = ENV_HOP_S,
                win_s: float = ENV_WIN_S) -> np.ndarray:
    """RMS level in dB per hop, float64 [ceil(N / hop)]: frame i covers the window centred on
    sample i * hop."""
    x = np.asarray(x, dtype=np.float64)
    hop = max(1, int(round(hop_s * sample_rate)))
    win = max(hop, int(round(win_s * sample_rate)))
    sq = np.concatenate([[0.0], np.cumsum(x * x)])
    centres = np.arange(0, len(x), hop)
    lo = np.clip(centres - win // 2, 0, len(x))
    hi = np.clip(centres + win // 2, 0, len(x))
    power = (sq[hi] - sq[lo]) / np.maximum(hi - lo, 1)
    return 10.0 * np.log10(power + 1e-20)


def estimate_period(x: np.ndarray, sample_rate: int, f0_hint_hz: float | None = None) -> float:
    """Pitch period in samples of a steady stretch x [N] (N >= 2 periods): the lag of the
    highest normalised autocorrelation (searched +-1 octave around the hint, else 30-2000 Hz);
    a multiple of the true period is as good for a loop."""
    x = np.asarray(x, dtype=np.float64) - float(np.mean(x))
    n = len(x)
    if f0_hint_hz is not None and f0_hint_hz > 0:
        lo = max(2, int(sample_rate / (f0_hint_hz * 2.1)))
        hi = int(sample_rate / (f0_hint_hz * 0.48)) + 1
    else:
        lo, hi = max(2, sample_rate // 2000), sample_rate // 30
    hi = min(hi, n // 2)
    if hi <= lo:
        return float(max(lo, 1))
    ac = correlate(x, x, mode="full", method="fft")[n - 1:]
    sq = np.cumsum(x[::-1] ** 2)[::-1]  # energy of x[k:]
    lags = np.arange(lo, hi)
    e0 = np.cumsum(x * x)  # energy of x[:n-k] = e0[n-k-1]
    denom = np.sqrt(sq[lags] * e0[n - lags - 1]) + 1e-20
    r = ac[lags] / denom
    k = int(np.argmax(r))
    # Parabolic refinement of the peak: a fraction of a sample matters over a long loop.
    if 0 < k < len(r) - 1:
        a, b, c = r[k - 1], r[k], r[k + 1]
        d = a - 2 * b + c
        off = 0.5 * (a - c) / d if d < 0 else 0.0
        return float(lags[k] + off)
    return float(lags[k])


def _ncc_scan(region: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of `template` [W] at every offset of `region` [R]:
    float64 [R - W + 1]."""
    w = len(template)
    t = template - template.mean()
    num = correlate(region, t, mode="valid", method="fft")
    sq = np.concatenate([[0.0], np.cumsum(region * region)])
    s = np.concatenate([[0.0], np.cumsum(region)])
    energy = (sq[w:] - sq[:-w]) - (s[w:] - s[:-w]) ** 2 / w
    return num / (np.sqrt(np.maximum(energy, 0.0) * float(t @ t)) + 1e-20)


def blend(a: np.ndarray, b: np.ndarray, rho: float | None = None) -> np.ndarray:
    """Crossfade a [X] (fading out) into b [X] (fading in), the gains corrected for their
    correlation rho (measured when None): a raised-cosine fade divided by
    sqrt(ga^2 + gb^2 + 2 rho ga gb), so the level holds for coherent and incoherent material
    alike (linear for rho = 1, equal power for rho = 0)."""
    n = len(a)
    if n == 0:
        return np.zeros(0, np.float32)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if rho is None:
        den = np.sqrt(float(a64 @ a64) * float(b64 @ b64))
        rho = float(a64 @ b64) / den if den > 0 else 0.0
    rho = min(1.0, max(0.0, float(rho)))
    w = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    ga, gb = 1.0 - w, w
    norm = np.sqrt(ga * ga + gb * gb + 2.0 * rho * ga * gb)
    return ((a64 * ga + b64 * gb) / norm).astype(np.float32)


@dataclass(frozen=True)
class Sustain:
    """One rendered note made playable for any length. Build with `Sustain.analyse`.

    audio: the note float32 [N]; loop_start / loop_end: its loop [ls, le) in samples (le - ls
    = len(body)), None when the note is not looped; body: the crossfaded (and, for a decaying
    sound, flattened) loop float32 [L]; decay_db_per_s: the level slope held notes follow
    while looping (0: sustains); release_onset: the sample where the render's release starts;
    period: the pitch period in samples; seam_ncc: the waveform match at the seam (1 = same).
    """

    audio: np.ndarray
    sample_rate: int
    loop_start: int | None
    loop_end: int | None
    body: np.ndarray
    decay_db_per_s: float
    release_onset: int
    period: float
    seam_ncc: float

    @property
    def looped(self) -> bool:
        return self.loop_start is not None

    @property
    def loop_s(self) -> tuple[float, float] | None:
        """(start, end) of the loop in seconds, None when not looped."""
        if self.loop_start is None or self.loop_end is None:
            return None
        return self.loop_start / self.sample_rate, self.loop_end / self.sample_rate

    @property
    def silent_after(self) -> int | None:
        """Samples since the onset after which a held note is silent (a decaying sound has
        decayed by SILENT_DB past its loop start, an unlooped one has ended); None: never."""
        if self.loop_start is None:
            return len(self.audio)
        if self.decay_db_per_s >= 0:
            return None
        return self.loop_start + int(SILENT_DB / self.decay_db_per_s * self.sample_rate)

    # -- analysis ------------------------------------------------------------------------
    @classmethod
    def analyse(cls, audio: np.ndarray, sample_rate: int, f0_hint_hz: float | None = None,
                hold_s: float | None = HOLD_S) -> Sustain:
        """Find the loop of a rendered note float32 [N] held `hold_s` then released (the
        model's notes: 3 s; None: HOLD_FRACTION of the note, for a re-pitched one).
        f0_hint_hz: the key's frequency (the search spans an octave either side, so a note
        the model put an octave off is found)."""
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ConfigError(f"a note is mono [N] float32, got shape {x.shape}: pass one channel")
        if sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {sample_rate}")
        sr = int(sample_rate)
        if hold_s is None:
            hold_s = HOLD_FRACTION * len(x) / sr
        onset = min(len(x), int(round(hold_s * sr)))
        le = onset - int(round(LOOP_END_MARGIN_S * sr))
        steady0 = int(round(STEADY_FROM_S * sr))
        x64 = x.astype(np.float64)
        peak_db = 20.0 * np.log10(float(np.abs(x64).max()) + 1e-20)

        def unlooped(period: float = 0.0) -> Sustain:
            return cls(x, sr, None, None, np.zeros(0, np.float32), 0.0, onset, period, 0.0)

        if le - steady0 < int(LOOP_MIN_S * sr) + 4 * sr // 100:
            return unlooped()  # too short a note for a loop
        tail = x64[le - int(0.1 * sr): le]
        if level_db(tail) < peak_db + NO_LOOP_BELOW_DB or peak_db < -120.0:
            return unlooped()  # decayed to silence before the release: plays as it is
        period = estimate_period(tail, sr, f0_hint_hz)
        w = max(int(round(SEAM_WINDOW_PERIODS * period)), int(SEAM_WINDOW_MIN_S * sr))
        w = min(w, int(0.04 * sr))
        # The level slope where the loop may lie (a least-squares line through its dB
        # envelope).
        env = envelope_db(x64, sr)
        hop = int(round(ENV_HOP_S * sr))
        i0, i1 = max(steady0, le - int(LOOP_MAX_S * sr)) // hop, le // hop
        t = np.arange(i0, i1) * ENV_HOP_S
        slope = float(np.polyfit(t, env[i0:i1], 1)[0]) if i1 - i0 >= 4 else 0.0
        decay = slope if slope < -DECAY_MIN_DB_PER_S else 0.0
        if not decay and level_db(tail) < peak_db + NO_LOOP_FLAT_BELOW_DB:
            return unlooped(period)  # a decayed sound's floor: plays as it is, and ends
        # Flattened copy: a decaying sound at the level of the loop end throughout.
        gain = 10.0 ** (-decay * (np.arange(len(x64)) - le) / sr / 20.0) if decay else 1.0
        flat = x64 * gain
        # Every loop start with a loop length in [LOOP_MIN_S, LOOP_MAX_S] after the attack.
        lmin, lmax = int(LOOP_MIN_S * sr), int(LOOP_MAX_S * sr)
        ls_lo = max(steady0 + w, le - lmax)
        ls_hi = le - lmin
        template = flat[le - w: le + w]
        region = flat[ls_lo - w: ls_hi + w]
        ncc = _ncc_scan(region, template)  # ncc[k] <-> ls = ls_lo + k
        # Prefer a level match too (an envelope wobble can match in shape at another level).
        lev_end = level_db(template)
        cand = ls_lo + np.arange(len(ncc))
        sq = np.concatenate([[0.0], np.cumsum(flat * flat)])
        lev = 10.0 * np.log10((sq[cand + w] - sq[cand - w]) / (2 * w) + 1e-20)
        # ... and a steady level at the start: the seam repeats the step the sound itself
        # makes there (body end -> body start is the sound's own x[ls - 1] -> x[ls]) at
        # every pass, so a start in a tremolo's or a beat's steep flank is heard as a pulse.
        w2 = int(SEAM_LEVEL_WIN_S * sr)
        c2 = np.clip(cand, w2, len(flat) - w2)
        before = 10.0 * np.log10((sq[c2] - sq[c2 - w2]) / w2 + 1e-20)
        after = 10.0 * np.log10((sq[c2 + w2] - sq[c2]) / w2 + 1e-20)
        score = ncc - 0.05 * np.abs(lev - lev_end) - 0.05 * np.abs(after - before)
        k = int(np.argmax(score))
        ls = int(cand[k])
        length = le - ls
        xf = min(int(LOOP_XFADE_S * sr), length // 4)
        body = flat[ls:le].astype(np.float32).copy()
        if xf > 0:
            # The loop's last xf samples fade into what preceded its start, so that after
            # body[-1] comes body[0] exactly as x[ls - 1] came before x[ls].
            body[-xf:] = blend(flat[le - xf: le], flat[ls - xf: ls], float(ncc[k]))
        return cls(x, sr, ls, le, body, decay, onset, period, float(ncc[k]))

    # -- playing -------------------------------------------------------------------------
    def render(self, n0: int, count: int) -> np.ndarray:
        """Samples n0 .. n0 + count of the note held for ever (head, then the loop, a
        decaying one fading on): float32 [count]."""
        idx = np.arange(int(n0), int(n0) + int(count))
        out = np.zeros(len(idx), dtype=np.float32)
        if self.loop_start is None or self.loop_end is None:
            ok = (idx >= 0) & (idx < len(self.audio))
            out[ok] = self.audio[idx[ok]]
            return out
        ls, length = self.loop_start, len(self.body)
        head = (idx >= 0) & (idx < ls)
        out[head] = self.audio[idx[head]]
        loop = idx >= ls
        if np.any(loop):
            j = idx[loop] - ls
            v = self.body[j % length].astype(np.float64)
            if self.decay_db_per_s:
                # The flattened body is at the level of the loop end: the decay is measured
                # from there (j - length), so the first pass continues the head seamlessly.
                v *= 10.0 ** (self.decay_db_per_s * (j - length) / self.sample_rate / 20.0)
                v[(j - length) / self.sample_rate * self.decay_db_per_s < SILENT_DB] = 0.0
            out[loop] = v
        return out

    def release_material(self, n: int) -> np.ndarray:
        """What a note held until sample n plays from n on: float32 [M] (finite).

        The held sound crossfades (RELEASE_XFADE_S, correlation-aligned within half a pitch
        period either way) into the render's release segment, the crossfade centred on its
        onset, scaled to the level sounding at n, then plays it to its end."""
        sr = self.sample_rate
        xf = max(8, int(RELEASE_XFADE_S * sr))
        now = self.render(n, xf).astype(np.float64)
        x = self.audio.astype(np.float64)
        j0 = max(0, self.release_onset - xf // 2)
        span = max(1, int(round(self.period))) if self.period else 1
        lo = max(0, j0 - span // 2)
        seg = x[lo: j0 + span // 2 + xf]
        if len(seg) < xf or not np.any(now):
            j, rho = j0, 0.0
        else:
            ncc = _ncc_scan(seg, now)
            k = int(np.argmax(ncc))
            j, rho = lo + k, float(ncc[k])
        tail = x[j:]
        if len(tail) == 0:
            return np.zeros(0, np.float32)
        lev_now, lev_tail = level_db(now), level_db(tail[:xf])
        g = 10.0 ** (min(lev_now - lev_tail, 24.0) / 20.0) if lev_tail > -190 else 0.0
        tail = tail * g
        m = min(xf, len(tail))
        out = tail.astype(np.float32)
        out[:m] = blend(now[:m], tail[:m], max(0.0, rho))
        fade = min(len(out), int(END_FADE_S * sr))
        if fade:
            out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        return out


class Playhead:
    """A held note as it plays: the sustain sounding (with crossfades when the timbre moves),
    then, once released, its release material. Samples are asked for by index since the
    onset, any number of times (a voice rewrites what it wrote ahead)."""

    def __init__(self, sustain: Sustain) -> None:
        self.sample_rate = sustain.sample_rate
        # (from sample n, sustain, sample offset into it, crossfade length): the last one
        # whose n has come sounds; a crossfade from the one before it.
        self._parts: list[tuple[int, Sustain, int, int]] = [(0, sustain, 0, 0)]
        self.released_at: int | None = None
        self._release: np.ndarray | None = None

    @property
    def sustain(self) -> Sustain:
        return self._parts[-1][1]

    @property
    def end(self) -> int | None:
        """Samples since the onset after which the note is silent; None: still held."""
        if self.released_at is not None and self._release is not None:
            return self.released_at + len(self._release)
        last_n, s, off, xf = self._parts[-1]
        after = s.silent_after
        # A move to a sound that has ended by the note's age (a decayed point) fades out
        # through the move's crossfade, not at once.
        return None if after is None else max(last_n + xf, after - off)

    def _held(self, n0: int, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.float32)
        n1 = n0 + count
        for i, (start, s, off, xf) in enumerate(self._parts):
            stop = self._parts[i + 1][0] if i + 1 < len(self._parts) else n1
            nxt_xf = self._parts[i + 1][3] if i + 1 < len(self._parts) else 0
            a, b = max(n0, start), min(n1, stop + nxt_xf)
            if a >= b:
                continue
            seg = s.render(a + off, b - a)
            if xf and a < start + xf:  # fading in
                k = np.arange(a, b) - start
                w = np.clip((k + 0.5) / xf, 0.0, 1.0)
                seg = seg * (0.5 - 0.5 * np.cos(np.pi * w)).astype(np.float32)
            if nxt_xf and b > stop:  # fading out under the next part
                k = np.arange(a, b) - stop
                w = np.clip((k + 0.5) / nxt_xf, 0.0, 1.0)
                seg = seg * (0.5 + 0.5 * np.cos(np.pi * w)).astype(np.float32)
            out[a - n0: b - n0] += seg
        return out

    def read(self, n0: int, count: int) -> np.ndarray:
        """Samples n0 .. n0 + count since the onset: float32 [count]."""
        if self.released_at is None or self._release is None:
            return self._held(n0, count)
        r = self.released_at
        out = np.zeros(count, dtype=np.float32)
        if n0 < r:
            k = min(count, r - n0)
            out[:k] = self._held(n0, k)
        a, b = max(n0, r), min(n0 + count, r + len(self._release))
        if a < b:
            out[a - n0: b - n0] = self._release[a - r: b - r]
        return out

    def release(self, n: int) -> None:
        """Let go at sample n (>= the last follow's): the release material from there."""
        if self.released_at is not None:
            return
        n = max(int(n), self._parts[-1][0] + self._parts[-1][3])
        start, s, off, _ = self._parts[-1]
        self._release = s.release_material(n + off)
        self.released_at = n

    def follow(self, n: int, sustain: Sustain, xfade_s: float = FOLLOW_XFADE_S,
               read_from: int | None = None) -> int | None:
        """From sample n, sound `sustain` (the same pitch at another point) instead, through a
        crossfade of xfade_s; aligned to the sounding waveform within two pitch periods, so
        the two do not cancel. Ignored once released. A move that has not begun by n (moves
        come faster than crossfades: a glide) is replaced by this one, so the timbre never
        lags the point by more than a crossfade; one whose crossfade is under way finishes
        first. `read_from`: the earliest sample a voice may still ask for (default n; what it
        has not written yet), from which on what sounds is kept. Returns the sample the move
        starts from (what lies before it is unchanged), None when ignored."""
        if self.released_at is not None:
            return None
        n = int(n)
        read_from = n if read_from is None else min(n, int(read_from))
        if len(self._parts) > 1 and self._parts[-1][0] >= n:
            self._parts = self._parts[:-1]  # a move still to come: this one replaces it
        last_n, _, _, last_xf = self._parts[-1]
        start = max(n, last_n + last_xf)
        xf = max(8, int(xfade_s * self.sample_rate))
        now = self._held(start, xf).astype(np.float64)
        span = max(1, int(round(2 * sustain.period))) if sustain.period else 0
        off = 0
        if span and np.any(now):
            cand = sustain.render(start - span, xf + 2 * span).astype(np.float64)
            if np.any(cand):
                ncc = _ncc_scan(cand, now)
                off = int(np.argmax(ncc)) - span
        # Keep the parts still heard from read_from on: the first kept one has finished
        # fading in by then, so it may stand alone from sample 0.
        first = 0
        for i in range(1, len(self._parts)):
            if self._parts[i][0] + self._parts[i][3] <= read_from:
                first = i
        keep = self._parts[first:]
        head = keep[0]
        self._parts = [(0, head[1], head[2], 0), *keep[1:], (start, sustain, off, xf)]
        return start


SEAM_FFT = 1024
SEAM_HOP = 128
SEAM_LEVEL_WIN_S = 0.02


def spectral_flux(x: np.ndarray, n_fft: int = SEAM_FFT, hop: int = SEAM_HOP) -> np.ndarray:
    """Normalised spectral flux per frame, float64 [T - 1]: sum |M_t - M_t-1| /
    sum (M_t + M_t-1) of Hann-windowed magnitude spectra; frame t is centred on t * hop +
    n_fft / 2 (0: unchanged spectrum, 1: disjoint)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < n_fft + hop:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    mag = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1))
    d = np.abs(np.diff(mag, axis=0)).sum(1)
    s = (mag[1:] + mag[:-1]).sum(1)
    return d / (s + 1e-12)


def seam_figures(sustain: Sustain, n_seams: int = 3) -> dict[str, float]:
    """The loop seam of a held note, measured on what it plays: `seam_flux_ratio` = the mean
    spectral flux of the frames whose window holds a seam / the mean flux of the render's own
    steady part (between STEADY_FROM_S and the loop end; 1 = the seam is as smooth as the
    sound itself); `seam_level_step_db` = the largest |level after - level before| over
    SEAM_LEVEL_WIN_S either side of a seam, less the same figure at the loop end in the
    render's steady part (the median step of the sound itself: its own wobble), with the raw
    figure as `seam_level_step_raw_db`; `loop_s` its length. NaNs when not looped."""
    if sustain.loop_start is None or sustain.loop_end is None:
        nan = float("nan")
        return {"seam_flux_ratio": nan, "seam_level_step_db": nan, "loop_s": nan}
    sr = sustain.sample_rate
    ls, le = sustain.loop_start, sustain.loop_end
    length = le - ls
    seams = [le + k * length for k in range(n_seams)]
    n0 = max(0, ls - SEAM_FFT)
    out = sustain.render(n0, seams[-1] + SEAM_FFT + SEAM_HOP - n0)
    flux = spectral_flux(out)
    centres = n0 + np.arange(1, len(flux) + 1) * SEAM_HOP + SEAM_FFT // 2
    near = np.zeros(len(flux), bool)
    for s in seams:
        near |= np.abs(centres - s) < SEAM_FFT // 2
    if sustain.decay_db_per_s:
        # The same flattening as the loop: a steady decay is no spectral change.
        g = 10.0 ** (-sustain.decay_db_per_s * (np.arange(len(sustain.audio)) - le) / sr / 20)
        ref_audio = sustain.audio * g
    else:
        ref_audio = sustain.audio.astype(np.float64)
    a = int(STEADY_FROM_S * sr)
    ref = spectral_flux(ref_audio[a: le])
    ratio = float(flux[near].mean() / max(float(ref.mean()), 1e-12)) if len(ref) else float("nan")
    w = int(SEAM_LEVEL_WIN_S * sr)

    def step(sig: np.ndarray, at: int) -> float:
        return abs(level_db(sig[at: at + w]) - level_db(sig[at - w: at]))

    steps = [step(out, s - n0) for s in seams]
    own_steps = [step(ref_audio, c) for c in range(a + w, le - w, max(1, length // 8))]
    base = float(np.median(own_steps)) if own_steps else 0.0
    return {"seam_flux_ratio": round(ratio, 3),
            "seam_level_step_db": round(max(0.0, max(steps) - base), 3),
            "seam_level_step_raw_db": round(max(steps), 3),
            "loop_s": round(length / sr, 3)}


__all__ = ["Playhead", "Sustain", "blend", "envelope_db", "estimate_period", "level_db",
           "seam_figures", "spectral_flux"]


def held_output(sustain: Sustain, hold_s: float, after_s: float = 1.0) -> np.ndarray:
    """What a note held `hold_s` and then let go plays: float32 [(hold_s + after_s) * rate]."""
    p = Playhead(sustain)
    off = int(round(hold_s * sustain.sample_rate))
    p.release(off)
    return p.read(0, off + int(round(after_s * sustain.sample_rate)))


def release_error_db(sustain: Sustain, original: np.ndarray, hold_s: float) -> float:
    """Largest |dB| difference over the first RELEASE_COMPARE_S after the note-off between a
    held note released after hold_s and `original` float32 [N] (the instrument's own note
    held hold_s, at the same rate), each relative to its level just before the note-off."""
    sr = sustain.sample_rate
    off = int(round(hold_s * sr))
    ours = release_envelope_db(held_output(sustain, hold_s, RELEASE_COMPARE_S + 0.05), off, sr)
    theirs = release_envelope_db(original, off, sr)
    return float(np.max(np.abs(ours - theirs)))
