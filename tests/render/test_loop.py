"""Held notes from rendered ones (render/loop.py): loops found on known signals, seams measured,
the release entered at its onset and level-matched, a decaying sound decaying on, the timbre
followed without a click."""

from __future__ import annotations

import numpy as np
import pytest

from pgesam_live.errors import ConfigError
from pgesam_live.model.metrics import release_envelope_db
from pgesam_live.render.loop import (
    FOLLOW_XFADE_S,
    Playhead,
    Sustain,
    blend,
    envelope_db,
    estimate_period,
    held_output,
    level_db,
    release_error_db,
    seam_figures,
)

SR = 24000


def note(f0_hz: float = 220.0, hold_s: float = 3.0, release_s: float = 1.0,
         decay_db_per_s: float = 0.0, release_tau_s: float = 0.15, vibrato: float = 0.0,
         noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A known note: three harmonics, a 20 ms attack, an optional steady decay, an exponential
    release (time constant release_tau_s) from hold_s on, optional vibrato and noise."""
    n = int((hold_s + release_s) * SR)
    t = np.arange(n) / SR
    f = f0_hz * (1.0 + vibrato * np.sin(2 * np.pi * 5.3 * t))
    ph = 2 * np.pi * np.cumsum(f) / SR
    x = np.sin(ph) + 0.5 * np.sin(2 * ph + 0.3) + 0.25 * np.sin(3 * ph + 1.1)
    env = np.minimum(1.0, t / 0.02) * 10 ** (decay_db_per_s * t / 20)
    env = np.where(t < hold_s, env, env * np.exp(-(t - hold_s) / release_tau_s))
    y = 0.3 * env * x
    if noise:
        y = y + noise * env * np.random.default_rng(seed).standard_normal(n)
    return y.astype(np.float32)


def clicks(x: np.ndarray, limit: float) -> int:
    """Sample-to-sample jumps larger than `limit`."""
    return int(np.sum(np.abs(np.diff(x.astype(np.float64))) > limit))


def test_period_is_found_near_the_truth() -> None:
    x = note(220.0)[SR: SR + 4000]
    assert estimate_period(x, SR, 220.0) == pytest.approx(SR / 220.0, abs=0.2)
    # An octave-off hint still lands on a multiple of the period (as good for a loop).
    p = estimate_period(x, SR, 440.0)
    assert p / (SR / 220.0) == pytest.approx(round(p / (SR / 220.0)), abs=0.01)


def test_a_steady_note_loops_at_a_period_boundary_with_a_smooth_seam() -> None:
    s = Sustain.analyse(note(220.0), SR, 220.0)
    assert s.looped and s.decay_db_per_s == 0.0
    ls, le = s.loop_start, s.loop_end
    assert ls is not None and le is not None
    assert 0.3 * SR <= le - ls <= 1.2 * SR
    assert le < 3.0 * SR  # before the release
    periods = (le - ls) / (SR / 220.0)
    assert abs(periods - round(periods)) < 0.05  # a whole number of periods
    fig = seam_figures(s)
    assert fig["seam_flux_ratio"] <= 1.5
    assert fig["seam_level_step_raw_db"] <= 0.5


def test_a_bad_loop_is_measured_as_one() -> None:
    """The seam figures can fail: a loop cut half a period off has a flux and a level step."""
    s = Sustain.analyse(note(220.0), SR, 220.0)
    assert s.loop_start is not None and s.loop_end is not None
    half = int(SR / 220.0 / 2)
    raw = s.audio[s.loop_start + half: s.loop_end].copy()  # no crossfade, half a period off
    bad = Sustain(s.audio, SR, s.loop_start + half, s.loop_end, raw, 0.0, s.release_onset,
                  s.period, 0.0)
    fig = seam_figures(bad)
    assert fig["seam_flux_ratio"] > 1.5


def test_a_tremolo_loop_starts_where_the_level_is_steady() -> None:
    """A sound whose level wobbles (tremolos of 5-6 Hz, +-1.5-2 dB, over a slower 1.3 Hz
    one): the seam repeats the sound's own step at the loop start on every pass, so the start
    is put where the level is steady, not on a flank (there the raw step was 0.4-0.7 dB)."""
    for rate_hz, depth_db in ((6.0, 1.5), (5.0, 2.0)):
        x = note(196.0).astype(np.float64)
        t = np.arange(len(x)) / SR
        x *= 10 ** ((depth_db * np.sin(2 * np.pi * rate_hz * t)
                     + np.sin(2 * np.pi * 1.3 * t)) / 20)
        fig = seam_figures(Sustain.analyse(x.astype(np.float32), SR, 196.0))
        assert fig["seam_level_step_raw_db"] <= 0.3
        assert fig["seam_flux_ratio"] <= 1.5


def test_vibrato_and_noise_still_loop_cleanly() -> None:
    s = Sustain.analyse(note(180.0, vibrato=0.004, noise=0.01), SR, 180.0)
    fig = seam_figures(s)
    assert fig["seam_flux_ratio"] <= 1.5
    assert fig["seam_level_step_db"] <= 0.5


def test_a_held_note_lasts_sixty_seconds_at_its_level_without_clicks() -> None:
    s = Sustain.analyse(note(220.0), SR, 220.0)
    out = held_output(s, 60.0, after_s=1.0)
    assert len(out) == 61 * SR
    lev = envelope_db(out[: 60 * SR], SR)
    steady = lev[100:]
    assert steady.max() - steady.min() < 1.0  # a sustained sound holds its level for 60 s
    # No jump larger than the signal's own largest step (a 220 Hz note of peak ~0.5).
    own = np.abs(np.diff(s.audio[SR: 2 * SR].astype(np.float64))).max()
    assert clicks(out, 1.5 * own) == 0
    # Released: 0.9 s into a release of tau 0.15 s is some 50 dB down.
    assert level_db(out[-int(0.1 * SR):]) - level_db(out[59 * SR: 60 * SR]) < -40.0


def test_decaying_sound_decays_on_while_held() -> None:
    s = Sustain.analyse(note(220.0, decay_db_per_s=-10.0), SR, 220.0)
    assert s.decay_db_per_s == pytest.approx(-10.0, abs=1.0)
    out = held_output(s, 8.0, after_s=0.2)
    lev = envelope_db(out, SR)
    # 10 dB per second on, through the loop (from 2 s to 7 s: about -50 dB).
    assert lev[700] - lev[200] == pytest.approx(-50.0, abs=5.0)
    assert s.silent_after is not None


def test_a_note_that_decays_to_silence_is_not_looped() -> None:
    x = note(220.0, decay_db_per_s=-40.0)
    s = Sustain.analyse(x, SR, 220.0)
    assert not s.looped
    out = held_output(s, 10.0, after_s=0.0)
    assert np.allclose(out[: len(x) - SR], x[: len(x) - SR])  # plays as rendered
    assert np.all(out[len(x):] == 0)


def test_a_struck_sounds_floor_is_not_looped_but_a_quiet_sustain_is() -> None:
    """A bell decays 58 dB in its first second, then a residue holds at that level: a loop
    there would hum on for as long as the key is held. A sound whose level holds 20 dB under
    its attack (a sustain after an accent) still loops."""
    t = np.arange(4 * SR) / SR
    struck = note(220.0) * np.maximum(10 ** (-58 * t / 20), 10 ** (-58 / 20)).astype(
        np.float32)
    s = Sustain.analyse(struck, SR, 220.0)
    assert not s.looped and s.silent_after == len(struck)
    accent = note(220.0) * np.maximum(10 ** (-60 * t / 20), 0.1).astype(np.float32)
    assert Sustain.analyse(accent, SR, 220.0).looped


@pytest.mark.parametrize("hold_s", [0.5, 2.0, 10.0])
def test_release_follows_the_instruments_release(hold_s: float) -> None:
    """Released after any hold, the note goes into the rendered release (tau 0.15 s), from the
    level it has then: the same envelope as the same instrument held hold_s."""
    s = Sustain.analyse(note(220.0), SR, 220.0)
    original = note(220.0, hold_s=hold_s)
    assert release_error_db(s, original, hold_s) <= 3.0
    env = release_envelope_db(held_output(s, hold_s, 0.4), int(hold_s * SR), SR)
    assert env[20] < -9.0  # really released: 0.2 s at tau 0.15 s is -11.6 dB


def test_release_error_notices_a_fade_instead_of_the_release() -> None:
    """The figure is not blind: a 30 ms fade against a slow release is far off."""
    slow = note(220.0, release_tau_s=0.5)
    s = Sustain.analyse(note(220.0, release_tau_s=0.02), SR, 220.0)
    assert release_error_db(s, slow, 2.0) > 3.0


def test_follow_crossfades_to_another_timbre_without_a_click() -> None:
    a = Sustain.analyse(note(220.0), SR, 220.0)
    b_audio = note(220.0) * 0.7
    b = Sustain.analyse(b_audio, SR, 220.0)
    p = Playhead(a)
    out = [p.read(0, 4 * SR)]
    p.follow(4 * SR, b)
    out.append(p.read(4 * SR, 2 * SR))
    x = np.concatenate(out)
    own = np.abs(np.diff(a.audio[SR: 2 * SR].astype(np.float64))).max()
    assert clicks(x, 1.5 * own) == 0
    assert level_db(x[-SR:]) - level_db(x[3 * SR: 4 * SR]) == pytest.approx(
        20 * np.log10(0.7), abs=0.5)


def test_a_glide_follows_without_lag_or_clicks_as_a_voice_reads_it() -> None:
    """A glide moves a held note every 64 ms, faster than a move's 80 ms crossfade, while a
    voice reads ahead block by block (and rewrites from each move). No move may queue behind
    the others (the timbre lagged the point by seconds), and what the voice has not written
    yet must still hold the crossfades it needs (dropping them clicked)."""
    sounds = [Sustain.analyse(note(220.0) * g, SR, 220.0) for g in (1.0, 0.5)]
    sounds.append(Sustain.analyse(np.roll(note(220.0), 37) * 0.8, SR, 220.0))  # other phase
    p = Playhead(sounds[0])
    block, ahead, written, out = 256, 1024, 0, np.zeros(8 * SR, np.float32)
    last_start = 0
    for k in range(int(7.5 * SR) // block):
        now = k * block
        if now >= SR and k % 6 == 0:  # every 64 ms, from 1 s on
            at = now + 2 * block
            start = p.follow(at, sounds[(k // 6) % 3], read_from=min(at, written))
            assert start is not None and start - at <= int(FOLLOW_XFADE_S * SR)  # no lag
            last_start = start
            written = min(written, start)  # the voice rewrites from the move on
        until = now + block + ahead
        if until > written:
            out[written: until] = p.read(written, until - written)
            written = until
    assert last_start > 7 * SR - int(0.2 * SR)
    own = np.abs(np.diff(sounds[0].audio[SR: 2 * SR].astype(np.float64))).max()
    assert clicks(out[: 7 * SR], 1.5 * own) == 0


def test_blend_holds_the_level_for_noise_and_for_a_tone() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(4800), rng.standard_normal(4800)
    mid = blend(a, b)[2000:2800]
    assert level_db(mid) == pytest.approx(0.0, abs=0.5)  # no 3 dB dip for noise
    tone = np.sin(np.arange(4800) * 0.05)
    assert np.allclose(blend(tone, tone), tone, atol=1e-5)  # coherent: linear, no bump


def test_bad_input_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="mono"):
        Sustain.analyse(np.zeros((2, 100), np.float32), SR)
    with pytest.raises(ConfigError, match="sample_rate"):
        Sustain.analyse(np.zeros(100, np.float32), 0)
    assert not Sustain.analyse(np.zeros(SR, np.float32), SR).looped  # too short: as rendered
