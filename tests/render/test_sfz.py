"""A point exported as a multisample (render/sfz.py): the SFZ parses with a real parser
(sfzlint), every key maps to a sample, the WAVs are 24-bit at the model's rate, and a real
consumer (polyphone) turns it into an SF2 that fluidsynth plays like the model's own note:
the same pitch, the loop held past the render's length, the level envelope and spectrum
close; a key beyond the range plays the nearest sample re-pitched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pgesam_live.errors import CheckpointError, ConfigError
from pgesam_live.render.dsp import normalise_peak
from pgesam_live.render.loop import envelope_db, estimate_period
from pgesam_live.render.sfz import export_point, parse_pitch_range
from tests.engine.test_held import HeldFakeSynth

SR = 24000
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lark, in sfzlint


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("export")
    r = export_point(HeldFakeSynth(), 0.2, -0.1, out, pitches=[55, 57, 59, 60], name="fake",
                     progress=lambda d, t: seen.append((d, t)))
    assert r.sfz == out / "fake.sfz"
    return r.sfz, seen


def regions(sfz: Path) -> list[dict[str, str]]:
    """The regions as sfzlint parses them; fails on any error it reports."""
    from sfzlint import parser  # a dev dependency (pyproject.toml): `make setup` installs it

    SFZValidatorConfig, validate = parser.SFZValidatorConfig, parser.validate

    problems: list[str] = []
    cfg = SFZValidatorConfig(file_path=sfz)
    validate(sfz, err_cb=lambda sev, msg, tok, path: problems.append(f"{sev} {msg}"),
             config=cfg)
    assert problems == []
    return [{k: str(v) for k, v in h.items()} for h in cfg.sfz.headers
            if str(h.token) == "region"]


def test_the_sfz_parses_and_maps_every_key(exported: tuple[Path, list[tuple[int, int]]]
                                           ) -> None:
    sfz, seen = exported
    rs = regions(sfz)
    assert [int(r["pitch_keycenter"]) for r in rs] == [55, 57, 59, 60]
    keys = [k for r in rs for k in range(int(r["lokey"]), int(r["hikey"]) + 1)]
    assert keys == list(range(128))  # every key once: beyond the range -> nearest sample
    for r in rs:
        info = sf.info(str(sfz.parent / r["sample"]))
        assert info.samplerate == SR and info.subtype == "PCM_24" and info.channels == 1
        assert r["loop_mode"] == "loop_continuous"  # a sustaining sound loops
        assert 0 < int(r["loop_start"]) < int(r["loop_end"]) < info.frames
        assert float(r["ampeg_release"]) > 0
    assert "amp_veltrack=100" in sfz.read_text()
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)  # the progress bar's steps


def test_the_loop_in_the_file_has_no_seam(exported: tuple[Path, list[tuple[int, int]]]
                                          ) -> None:
    """Looped as a sampler loops it (jump from loop_end to loop_start, no crossfade)."""
    sfz, _ = exported
    r = regions(sfz)[1]
    x, _ = sf.read(str(sfz.parent / r["sample"]), dtype="float32")
    a, b = int(r["loop_start"]), int(r["loop_end"])
    looped = np.concatenate([x[a - 2000: b + 1], x[a: a + 2000]])
    seam = 2000 + (b + 1 - a)
    d = np.abs(np.diff(looped.astype(np.float64)))
    assert d[seam - 5: seam + 5].max() <= 1.2 * d[:1500].max()


def test_polyphone_makes_an_sf2_that_plays_like_the_model(
        exported: tuple[Path, list[tuple[int, int]]], tmp_path: Path) -> None:
    from pgesam_live.model.soundfont import SoundfontRenderer

    if shutil.which("polyphone") is None:
        if os.environ.get("PGESAM_REQUIRE_SFZ_TOOLS"):
            pytest.fail("polyphone is missing: `make system-deps` installs it")
        pytest.skip("polyphone is missing: apt-get install polyphone (make system-deps)")
    sfz, _ = exported
    out = tmp_path / "sf2"
    out.mkdir()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    subprocess.run(["polyphone", "-1", "-i", str(sfz), "-d", str(out), "-o", "fake"],
                   check=True, env=env, capture_output=True, timeout=120)
    sf2 = out / "fake.sf2"
    assert sf2.stat().st_size > 100_000
    fs = SoundfontRenderer(str(sf2), SR)
    try:
        played = fs.render(0, 57, 100, hold_s=6.0, release_s=1.0)  # held past the 4 s render
        low = fs.render(0, 45, 100, hold_s=2.0, release_s=0.5)  # beyond the range
    finally:
        fs.close()
    model = normalise_peak(HeldFakeSynth().render(np.array([[0.2, -0.1]], np.float32),
                                                  np.array([57])))[0]
    f_a3 = 440.0 * 2 ** ((57 - 69) / 12)
    steady = slice(SR, 2 * SR)
    assert SR / estimate_period(played[steady], SR, f_a3) == pytest.approx(f_a3, rel=0.003)
    f_a2 = 440.0 * 2 ** ((45 - 69) / 12)
    assert SR / estimate_period(low[steady], SR, f_a2) == pytest.approx(f_a2, rel=0.003)
    # Level envelope, each re its own mean over 0.5-2.5 s: the same shape where both sound.
    ep, em = envelope_db(played, SR), envelope_db(model, SR)
    ep, em = ep - ep[50:250].mean(), em - em[50:250].mean()
    assert np.abs(ep[10:290] - em[10:290]).max() < 1.5
    assert np.abs(ep[300:590] - ep[50:250].mean()).max() < 1.5  # the loop holds to 6 s
    # Released after the key-up at 6 s as the model's note releases after its 3 s.
    assert ep[650] == pytest.approx(em[350], abs=3.0) and ep[650] < -20
    # Spectrum: the partial balance of the model's note (the third harmonic's share).
    def share(x: np.ndarray) -> float:
        seg = x[SR: 2 * SR].astype(np.float64) * np.hanning(SR)
        spec = np.abs(np.fft.rfft(seg))
        return 20 * np.log10(spec[round(3 * f_a3)] / spec[round(f_a3)])
    assert share(played) == pytest.approx(share(model), abs=1.0)


def test_bad_requests_name_the_fix(tmp_path: Path) -> None:
    synth = HeldFakeSynth()
    with pytest.raises(ConfigError, match="outside the model's range"):
        export_point(synth, 0, 0, tmp_path, pitches=[30])
    with pytest.raises(ConfigError, match="letters, digits"):
        export_point(synth, 0, 0, tmp_path, pitches=[60], name="../evil")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="folder"):
        export_point(synth, 0, 0, tmp_path / "file", pitches=[60])
    assert parse_pitch_range("C3-C5", (48, 72)) == list(range(48, 73))
    assert parse_pitch_range("40-50", (48, 72)) == [48, 49, 50]
    assert parse_pitch_range("C4", (48, 72)) == [60]
    with pytest.raises(ConfigError, match="C3-C5"):
        parse_pitch_range("H4-C5", (48, 72))
    with pytest.raises(ConfigError, match="outside"):
        parse_pitch_range("C1-C2", (48, 72))


class BrokenFakeSynth(HeldFakeSynth):
    """Renders NaN at MIDI 61 and silence at MIDI 62."""

    def render(self, points: np.ndarray, pitches: np.ndarray, seed: int = 0) -> np.ndarray:
        out = super().render(points, pitches, seed)
        out[pitches == 61] = np.nan
        out[pitches == 62] = 0.0
        return out


@pytest.mark.parametrize("pitch, error, fragment", [
    (61, CheckpointError, "non-finite samples at pitch 61"),
    (62, ConfigError, "pitch 62 is silent"),
])
def test_a_nan_or_silent_note_writes_no_sfz(tmp_path: Path, pitch: int, error: type,
                                            fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        export_point(BrokenFakeSynth(), 0, 0, tmp_path / "out", pitches=[60, pitch])
    assert not list((tmp_path / "out").glob("*.sfz"))
    assert not list((tmp_path / "out").glob("*.wav"))


def make_fake_synth() -> HeldFakeSynth:
    """Built in the export's own process (picklable by reference)."""
    return HeldFakeSynth()


def test_the_engine_exports_in_its_own_process_and_confines_network_sources(
        tmp_path: Path) -> None:
    from pgesam_live.app.build import OfflineRig
    from pgesam_live.settings import Settings

    rig = OfflineRig(Settings().replace(audio="offline", cache_spill=False),
                     synth=HeldFakeSynth())
    e = rig.engine
    e.export_dir = tmp_path / "sessions"
    e.export_synth_factory = make_fake_synth
    events: list[dict[str, object]] = []
    e.add_listener(lambda ev: events.append(ev) if ev.get("kind") == "export" else None)
    try:
        assert e.submit("at 0.3 0.1").ok
        rig.run_until(0.1)
        # From the web page or OSC: only into the sessions folder.
        r = e.start_export(out_dir=tmp_path / "elsewhere", src="web", pitches=[60])
        assert not r.ok and "sessions folder" in r.text
        r = e.start_export(out_dir="../../up", src="osc", pitches=[60])
        assert not r.ok and "sessions folder" in r.text
        r = e.start_export(pitches=[59, 60], src="web", name="mine")
        assert r.ok, r.text
        deadline, t0 = 60.0, time.monotonic()
        while not any(ev["sfz"] or ev["error"] for ev in events):
            assert time.monotonic() - t0 < deadline, events
            time.sleep(0.05)
        last = events[-1]
        assert last["error"] is None and last["done"] == 2
        sfz = Path(str(last["sfz"]))
        assert sfz == (tmp_path / "sessions" / "export-mine" / "mine.sfz").resolve()
        assert len(regions(sfz)) == 2
        assert [ev["done"] for ev in events if not ev["sfz"]] == [0, 2]
        r = e.start_export(pitches=[10])
        assert not r.ok and "outside the model's range" in r.text
        # Files are named after the point as the performer spelt it; coordinates spell signs.
        assert e.submit("mark warm-pad").ok and e.submit("at warm-pad").ok
        rig.run_until(0.2)
        assert e._export_job(None, None, [60], "repl", None).name == "warm-pad"
        assert e._export_job((0.2, -0.3), None, [60], "repl", None).name == "p0.20_m0.30"
    finally:
        rig.close()


class DecayingFakeSynth(HeldFakeSynth):
    """A plucked sound: it decays 10 dB/s while held (3 s), then releases with tau 0.05 s
    (60 dB in 0.35 s) into a noise floor 70 dB under its peak."""

    decay_db_per_s = 10.0

    def render(self, points: np.ndarray, pitches: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(0)
        t = np.arange(4 * SR) / SR
        env = np.minimum(1.0, t / 0.005) * 10 ** (-self.decay_db_per_s * np.minimum(t, 3.0) / 20) \
            * np.where(t < 3.0, 1.0, np.exp(-(t - 3.0) / 0.05))
        out = []
        for p in pitches:
            f0 = 440.0 * 2 ** ((int(p) - 69) / 12)
            x = 0.5 * env * np.sin(2 * np.pi * f0 * t) + 0.5 * 10 ** (-70 / 20) \
                * rng.standard_normal(len(t)) / np.sqrt(2)
            out.append(x.astype(np.float32))
        return np.stack(out)


def test_a_decaying_sound_keeps_decaying_while_held_and_releases_at_its_own_rate(
        tmp_path: Path) -> None:
    """A held key plays the note as the instrument holds it (the decay goes on past the
    render's 3 s: no release baked in), and the release is timed on the render's release
    though the floor stops it 40 dB down (extrapolated: 0.35 s to -60 dB, not the render's
    end)."""
    r = export_point(DecayingFakeSynth(), 0.0, 0.0, tmp_path, pitches=[60], name="pluck")
    (s,) = r.samples
    assert s.loop is None
    x, sr = sf.read(str(tmp_path / s.file), dtype="float32")
    assert len(x) > 6 * sr  # longer than the 4 s render: the decay to -60 dB of its loop
    env = envelope_db(x, sr)
    slope = (env[450] - env[350]) / 1.0  # 3.5 s .. 4.5 s: past the render's release onset
    assert slope == pytest.approx(-10.0, abs=1.5)
    assert s.release_s == pytest.approx(0.35 * 100 / 60, rel=0.25)


class SlowDecayFakeSynth(DecayingFakeSynth):
    """An organ-like sound that dies away slowly (4 dB/s: 60 dB take 15 s)."""

    decay_db_per_s = 4.0


def test_a_slowly_decaying_sound_decays_all_the_way_in_its_file(tmp_path: Path) -> None:
    """Its file goes on until the sound is 60 dB under its loop's level, as the instrument
    holds it, not cut short (a producer's chord: one key stopping while the others ring)."""
    r = export_point(SlowDecayFakeSynth(), 0.0, 0.0, tmp_path, pitches=[60], name="organ")
    (s,) = r.samples
    assert s.loop is None
    x, sr = sf.read(str(tmp_path / s.file), dtype="float32")
    env = envelope_db(x, sr)
    loop_level = float(env[250])  # 2.5 s, in the held part
    assert len(x) > 16 * sr
    assert env[-30:-12].max() < loop_level - 50.0  # before the last 0.1 s fade


class SlowFakeSynth(HeldFakeSynth):
    """Takes its time: an export of it is still rendering when the session ends."""

    def render(self, points: np.ndarray, pitches: np.ndarray, seed: int = 0) -> np.ndarray:
        time.sleep(3.0)
        return super().render(points, pitches, seed)


def make_slow_synth() -> SlowFakeSynth:
    return SlowFakeSynth()


@pytest.mark.parametrize("wait", [True, False])
def test_an_export_running_when_the_session_ends_is_finished_or_said_cancelled(
        tmp_path: Path, wait: bool) -> None:
    """`export` then `quit`: the session waits for the export (or, after Ctrl-C, cancels
    it) and says so; never an empty folder without a word."""
    from pgesam_live.app.build import OfflineRig
    from pgesam_live.settings import Settings

    rig = OfflineRig(Settings().replace(audio="offline", cache_spill=False),
                     synth=HeldFakeSynth())
    e = rig.engine
    e.export_dir = tmp_path / "sessions"
    e.export_synth_factory = make_slow_synth
    said: list[str] = []
    try:
        assert e.start_export(pitches=[60], name="late").ok
        assert [x.name for x in e.exports_running()] == ["late"]
        # One at a time: a second export while one renders is refused, saying which.
        r = e.start_export(pitches=[61], name="second")
        assert not r.ok and "late is still rendering" in r.text, r.text
        e.finish_exports(said.append, wait=wait)
        assert e.exports_running() == []
        sfz = tmp_path / "sessions" / "export-late" / "late.sfz"
        if wait:
            assert "finishing it before quitting" in said[0] and len(said) == 2
            assert sfz.is_file()
            assert said[1] == f"export late: {sfz.resolve()}", said  # and that it finished
        else:
            assert said == [f"export late cancelled at 0 of 1 notes: {sfz.parent.resolve()} "
                            "holds no SFZ; run the export again"]
            assert not sfz.exists()
    finally:
        rig.close()


def test_export_takes_the_point_the_lines_before_it_set(tmp_path: Path) -> None:
    """`at 0.3 0.1` then `export` piped in one go: the export is of (0.3, 0.1), though the
    `at` is applied only by the next audio block."""
    import threading

    from pgesam_live.app.build import OfflineRig
    from pgesam_live.settings import Settings

    rig = OfflineRig(Settings().replace(audio="offline", cache_spill=False),
                     synth=HeldFakeSynth())
    e = rig.engine
    e.export_dir = tmp_path / "sessions"
    e.export_synth_factory = make_fake_synth
    stop = threading.Event()

    def drive() -> None:  # the audio thread: a block every 5 ms
        while not stop.is_set():
            rig.run_until(rig.audio.time_s() + 0.005)
            time.sleep(0.005)

    driver = threading.Thread(target=drive, daemon=True)
    try:
        assert e.submit("at 0.5 -0.5").ok
        driver.start()
        time.sleep(0.1)
        for x, y, label in [(0.3, 0.1, "p0.30_p0.10"), (-0.2, 0.4, "m0.20_p0.40")]:
            assert e.submit(f"at {x} {y}").ok
            r = e.start_export(pitches=[60])
            assert r.ok and label in r.text, r.text
            assert e.exports_started[-1].job.wait(60.0)  # one export at a time
        e.finish_exports(lambda text: None, wait=False)
    finally:
        stop.set()
        driver.join(5)
        rig.close()


def test_export_names_and_pitch_spans_are_checked_with_the_fix() -> None:
    from pgesam_live.render.sfz import check_export_name

    for bad in (".", "..", ".hidden", "-x", "a/b", "", "x" * 65):
        with pytest.raises(ConfigError, match="starting with a letter"):
            check_export_name(bad)
    assert check_export_name("warm-pad.v2") == "warm-pad.v2"
    with pytest.raises(ConfigError, match='"200" is pitch 200'):
        parse_pitch_range("20-200", (48, 72))
    with pytest.warns(UserWarning, match="exporting B4-C5"):
        assert parse_pitch_range("B4-D5", (48, 72)) == [71, 72]
