"""The musical clock with a fake clock, a fake sink recording calls and a fake source.

Audio from the fake source encodes its key: samples[0:4] = (pitch, x, y, seed), so a test
can tell from a sink call which note (and which point) was played."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pytest

from pgesam_live.engine.scheduler import Scheduler
from pgesam_live.engine.tempo import TempoMap
from pgesam_live.errors import CommandError
from pgesam_live.patches.model import Patch, PatchCommand, Trajectory, make_sequence
from pgesam_live.patches.schema import parse_patch

BLOCK_S = 256 / 24000
EXACT = 1e-9


class Key(NamedTuple):
    x: float
    y: float
    pitch: int
    seed: int


class Clock:
    now_s = 0.0


def audio_of(key: Key, n: int = 2400) -> np.ndarray:
    a = np.zeros(n, dtype=np.float32)
    a[:4] = (key.pitch, key.x, key.y, key.seed)
    return a


class FakeSource:
    """A cache: ``auto`` answers every key; otherwise only keys in ``cached``."""

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.cached: dict[Key, np.ndarray] = {}
        self.late = 0
        self.fallback = 0

    def key(self, x: float, y: float, pitch: int, seed: int) -> Key:
        return Key(round(x, 3), round(y, 3), pitch, seed)

    def add(self, x: float, y: float, pitch: int, seed: int = 0) -> None:
        k = self.key(x, y, pitch, seed)
        self.cached[k] = audio_of(k)

    def get(self, key: Key) -> np.ndarray | None:
        return audio_of(key) if self.auto else self.cached.get(key)

    def nearest_pitch(self, key: Key, max_semitones: int = 3) -> tuple[Key, np.ndarray] | None:
        near = [k for k in self.cached if (k.x, k.y, k.seed) == (key.x, key.y, key.seed)
                and abs(k.pitch - key.pitch) <= max_semitones]
        if not near:
            return None
        best = min(near, key=lambda k: (abs(k.pitch - key.pitch), k.pitch))
        return best, self.cached[best]

    def nearest_point(self, key: Key) -> tuple[Key, np.ndarray] | None:
        near = [k for k in self.cached if (k.pitch, k.seed) == (key.pitch, key.seed)]
        if not near:
            return None
        best = min(near, key=lambda k: (k.x - key.x) ** 2 + (k.y - key.y) ** 2)
        return best, self.cached[best]

    def count_late(self) -> None:
        self.late += 1

    def count_fallback(self) -> None:
        self.fallback += 1


class Call(NamedTuple):
    tick_s: float
    start_s: float
    velocity: float
    pan: float
    length_s: float | None
    pitch: int
    x: float
    y: float
    n_samples: int


class FakeSink:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self.tags: list[object] = []
        self.released: list[tuple[float, object]] = []

    def play(self, samples: np.ndarray, start_s: float, velocity: float, pan: float,
             length_s: float | None, tag: object = None) -> None:
        self.calls.append(Call(self.clock.now_s, start_s, velocity, pan, length_s,
                               int(round(float(samples[0]))), float(samples[1]),
                               float(samples[2]), len(samples)))
        self.tags.append(tag)

    def release(self, tag: object, at_s: float | None = None) -> None:
        self.released.append((self.clock.now_s if at_s is None else at_s, tag))

    def drop_pending(self, tag: object) -> int:
        keep = [(c, t) for c, t in zip(self.calls, self.tags, strict=True)
                if not (t == tag and c.start_s > self.clock.now_s)]
        dropped = len(self.calls) - len(keep)
        self.calls, self.tags = [c for c, _ in keep], [t for _, t in keep]
        return dropped


class FakeRequester:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.requests: list[tuple[float, float, float, int, int, float]] = []
        self.cancelled: list[Any] = []

    def request(self, key: Any, deadline_s: float) -> None:
        # (a FakeSource Key has x, y; the real cache's NoteKey xq, yq)
        x, y = (key.x, key.y) if isinstance(key, Key) else (key.xq, key.yq)
        self.requests.append((self.clock.now_s, x, y, key.pitch, key.seed, deadline_s))

    def cancel(self, keys: list[Any]) -> None:
        self.cancelled.extend(keys)


class Rig:
    def __init__(self, auto: bool = True, **kw: object) -> None:
        self.clock = Clock()
        self.source = FakeSource(auto)
        self.sink = FakeSink(self.clock)
        self.req = FakeRequester(self.clock)
        self.sched = Scheduler(self.sink, self.source, self.req, **kw)  # type: ignore[arg-type]
        self.n = 0  # the next block to tick

    def run(self, until_s: float) -> None:
        """Tick once per audio block before ``until_s`` (the block boundaries of a 24 kHz
        stream with 256-sample blocks); the clock stays at the last tick."""
        while self.n * BLOCK_S < until_s:
            self.clock.now_s = self.n * BLOCK_S
            self.sched.tick(self.clock.now_s)
            self.n += 1

    @property
    def next_tick_s(self) -> float:
        return self.n * BLOCK_S


def patch(text: str) -> Patch:
    return parse_patch("pgesam: 1\n" + text, "test.yaml")


ARP = """
tempo: 120
sequences:
  arp:
    timbre: [0.1, 0.2]
    notes: "C4 E4 G4 B4"
    step: 1
    repeat: 1
"""


def test_notes_land_on_their_beats_on_a_fresh_clock() -> None:
    rig = Rig()
    assert rig.sched.load_patch(patch(ARP)) == 0.0
    rig.run(3.0)
    assert [c.pitch for c in rig.sink.calls] == [60, 64, 67, 71]
    for beat, call in enumerate(rig.sink.calls):
        assert call.start_s == pytest.approx(beat * 60 / 120, abs=EXACT)
        # Handed over within the look-ahead, before the note is due.
        assert call.start_s - 0.2 <= call.tick_s <= call.start_s
        assert (call.x, call.y) == (pytest.approx(0.1), pytest.approx(0.2))
        assert call.length_s is None  # no gate: the full one-shot


def test_a_fresh_clock_after_silence_starts_at_the_horizon() -> None:
    rig = Rig(lookahead_s=0.1)
    rig.run(1.0)  # silence: the clock runs, nothing plays
    offset = rig.clock.now_s + 0.1  # the last tick's horizon
    rig.sched.load_patch(patch(ARP.replace("tempo: 120", "tempo: 90")))
    rig.run(5.0)
    assert len(rig.sink.calls) == 4
    for beat, call in enumerate(rig.sink.calls):
        assert call.start_s == pytest.approx(beat * 60 / 90 + offset, abs=EXACT)
    assert rig.sched.status()["tempo_bpm"] == 90


def test_chords_rests_velocity_cycling_gate_and_repeat() -> None:
    rig = Rig()
    rig.sched.load_patch(patch("""
tempo: 60
sequences:
  s:
    timbre: [0, 0]
    notes: "C4 ~ [E4 G4] D4"
    step: 0.5
    velocity: [1.0, 0.5, 0.25]
    gate: 0.5
    repeat: 2
"""))
    rig.run(6.0)
    got = [(c.start_s, c.pitch, c.velocity, c.length_s) for c in rig.sink.calls]
    # Steps 0..7 at 0.5 s each (60 bpm, half-beat steps); step 1 and 5 are rests; velocity
    # cycles over the global step number (rests included), across the repeat.
    vel = [1.0, 0.5, 0.25]
    expected = []
    for n in range(8):
        pitches = [(60,), (), (64, 67), (62,)][n % 4]
        for p in pitches:
            expected.append((0.5 * n, p, vel[n % 3], 0.25))
    assert len(got) == len(expected) == 8
    for g, e in zip(got, expected, strict=True):
        assert g[0] == pytest.approx(e[0], abs=EXACT)
        assert g[1:3] == e[1:3]
        assert g[3] == pytest.approx(e[3], abs=EXACT)
    assert rig.sched.status()["sequences"] == []  # finished after 2 passes


def test_repeat_zero_runs_until_stopped() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(10.0)
    # 2 beats per second: beats 0..20 (beat 20 = 10.0 s lies inside the 0.2 s look-ahead)
    assert len(rig.sink.calls) == 21
    assert rig.sched.status()["sequences"] == ["arp"]
    rig.sched.stop_sequence("arp")
    n = len(rig.sink.calls)
    rig.run(14.0)
    assert len(rig.sink.calls) == n
    assert rig.sched.status()["sequences"] == []
    with pytest.raises(CommandError, match="no sequence 'arp'"):
        rig.sched.stop_sequence("arp")


def test_trajectory_sampled_at_each_onset() -> None:
    rig = Rig()
    p = patch("""
tempo: 120
points:
  a: [-1, 0]
  b: [1, 0.5]
trajectories:
  lin: {keys: [[0, a], [4, b]]}
  smo: {keys: [[0, a], [4, b]], curve: smooth}
  loo: {keys: [[0, a], [2, b], [4, a]], loop: true}
sequences:
  l: {timbre: lin, notes: "C4", step: 1, repeat: 6}
  s: {timbre: smo, notes: "D4", step: 1, repeat: 6}
  o: {timbre: loo, notes: "E4", step: 1, repeat: 6}
""")
    rig.sched.load_patch(p)
    rig.run(4.0)
    by_pitch: dict[int, list[tuple[float, float]]] = {60: [], 62: [], 64: []}
    for c in rig.sink.calls:
        by_pitch[c.pitch].append((c.x, c.y))
    smooth = [3 * t * t - 2 * t**3 for t in (0, 0.25, 0.5, 0.75, 1, 1)]
    for beat in range(6):
        lin_t = min(beat / 4, 1.0)
        assert by_pitch[60][beat] == pytest.approx((-1 + 2 * lin_t, 0.5 * lin_t), abs=1e-3)
        assert by_pitch[62][beat] == pytest.approx((-1 + 2 * smooth[beat], 0.5 * smooth[beat]),
                                                   abs=1e-3)
        tri = [0, 0.5, 1, 0.5][beat % 4]  # loops every 4 beats: a -> b -> a
        assert by_pitch[64][beat] == pytest.approx((-1 + 2 * tri, 0.5 * tri), abs=1e-3)
    assert by_pitch[62][1] != pytest.approx(by_pitch[60][1], abs=1e-3)  # smooth != linear


def test_trajectory_at_helper() -> None:
    t = Trajectory("t", ((0.0, (0.0, 0.0)), (2.0, (1.0, -1.0))), curve="linear", loop=True)
    assert t.at(1.0) == pytest.approx((0.5, -0.5))
    assert t.at(3.0) == pytest.approx((0.5, -0.5))  # looped
    s = Trajectory("s", ((1.0, (0.0, 0.0)), (3.0, (1.0, 1.0))), curve="smooth")
    assert s.at(0.0) == (0.0, 0.0)  # before the first key: hold it
    assert s.at(1.5)[0] == pytest.approx(3 * 0.25**2 - 2 * 0.25**3)
    assert s.at(9.0) == (1.0, 1.0)  # after the last key, no loop: hold it


def test_tempo_change_at_the_next_beat_keeps_continuity() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(1.3)
    committed = rig.sched.committed_beat()
    change = rig.sched.set_tempo(60)
    assert change == math.ceil(committed) and change > committed
    rig.run(8.0)
    starts = [c.start_s for c in rig.sink.calls]
    for beat, s in enumerate(starts):
        expected = beat * 0.5 if beat <= change else change * 0.5 + (beat - change) * 1.0
        assert s == pytest.approx(expected, abs=EXACT)
    assert rig.sched.status()["tempo_bpm"] == 60
    with pytest.raises(CommandError, match="20..400"):
        rig.sched.set_tempo(1000)


def test_tempo_change_on_the_bar() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(0.7)
    assert rig.sched.set_tempo(240, quantum="bar") == 4.0
    rig.run(3.0)
    starts = [c.start_s for c in rig.sink.calls]
    assert starts[:6] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.25], abs=EXACT)


def test_patch_swap_at_the_next_bar() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(2.3)
    b = patch("""
tempo: 60
sequences:
  bass: {timbre: [0.5, 0.5], notes: "C2", step: 2, repeat: 0}
""")
    swap = rig.sched.load_patch(b)
    assert swap == 8.0  # committed ~ beat 5 (2.3 s + 0.2 s at 120 bpm): the next bar is 8
    assert rig.sched.status()["pending_patch"] == "test.yaml"
    rig.run(12.0)
    old = [c for c in rig.sink.calls if c.pitch != 36]
    new = [c for c in rig.sink.calls if c.pitch == 36]
    assert max(c.start_s for c in old) == pytest.approx(3.5, abs=EXACT)  # beat 7: last before
    assert new[0].start_s == pytest.approx(4.0, abs=EXACT)  # beat 8 at 120 bpm
    assert new[1].start_s - new[0].start_s == pytest.approx(2.0, abs=EXACT)  # 2 beats at 60
    assert rig.sched.status()["sequences"] == ["bass"]
    assert rig.sched.status()["tempo_bpm"] == 60


def test_lookahead_changes_live() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(3.0)
    early = [c.start_s - c.tick_s for c in rig.sink.calls[1:]]  # [0] starts the clock
    assert max(early) <= 0.2 + EXACT and min(early) > 0.2 - BLOCK_S - EXACT
    rig.sched.set_lookahead(0.05)
    n = len(rig.sink.calls)
    rig.run(8.0)
    late_part = [c.start_s - c.tick_s for c in rig.sink.calls[n + 1:]]
    assert late_part and max(late_part) <= 0.05 + EXACT
    assert min(late_part) > 0.05 - BLOCK_S - EXACT
    assert rig.sched.status()["lookahead_s"] == 0.05
    with pytest.raises(CommandError):
        rig.sched.set_lookahead(0)


def test_render_requests_go_out_before_the_deadline() -> None:
    # A pre-roll of one bar plus the look-ahead gives even the first notes their full bar.
    rig = Rig(preroll_s=2.2)
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0").replace(
        '"C4 E4 G4 B4"', '"C4 E4 G4 B4 C5 D5 E5 F5"')))
    rig.run(8.0)
    assert rig.sink.calls[0].start_s == pytest.approx(2.2)
    for call in rig.sink.calls:
        reqs = [r for r in rig.req.requests if r[3] == call.pitch and r[5] <= call.start_s]
        # the latest request for this pitch before it played
        r = max(reqs, key=lambda r: r[5])
        asked_at, deadline = r[0], r[5]
        assert deadline == pytest.approx(call.start_s - 0.2, abs=EXACT)
        assert asked_at <= deadline
        # One bar ahead: asked at least ~2 s (4 beats at 120) before the note is due.
        assert call.start_s - asked_at >= 2.0 - BLOCK_S
    # No spam: one request per note occurrence at most.
    assert len(rig.req.requests) <= len(rig.sink.calls) + 8


def test_fallback_repitch_within_three_semitones() -> None:
    rig = Rig(auto=False)
    rig.source.add(0.0, 0.0, 62)
    rig.sched.play_now([60], velocity=0.7)
    rig.run(0.1)
    assert len(rig.sink.calls) == 1
    call = rig.sink.calls[0]
    # D4 played 2 semitones down: resampled longer by 2**(2/12).
    assert abs(call.n_samples - round(2400 * 2 ** (2 / 12))) <= 1
    st = rig.sched.status()
    assert (st["late"], st["fallbacks"], st["skipped"]) == (1, 1, 0)
    assert (rig.source.late, rig.source.fallback) == (1, 1)
    # and the real note was requested at once
    assert any(r[3] == 60 for r in rig.req.requests)


def test_fallback_nearest_point_then_any_pitch_within_an_octave_then_skip() -> None:
    rig = Rig(auto=False)
    rig.source.add(0.5, 0.5, 60)      # same pitch, another point
    rig.source.add(0.0, 0.0, 66)      # same point, 6 semitones away: too far for the first step
    rig.sched.play_now([60, 72, 100])
    rig.run(0.1)
    # 60 from the other point; 72 from 66, the nearest cached pitch within an octave,
    # re-pitched (a chord right after a load sounds); 100 has nothing within an octave.
    assert [(c.pitch, c.x, c.y) for c in rig.sink.calls][0] == (60, 0.5, 0.5)
    assert len(rig.sink.calls) == 2 and rig.sink.calls[1].n_samples != 2400
    st = rig.sched.status()
    assert (st["late"], st["fallbacks"], st["skipped"]) == (3, 2, 1)
    assert rig.sched.counters.fallback_point == 2


def test_ready_notes_are_not_late() -> None:
    rig = Rig(auto=False)
    rig.source.add(0.0, 0.0, 60)
    rig.sched.play_now([60])
    rig.run(0.1)
    assert rig.sink.calls[0].n_samples == 2400
    assert rig.sched.status()["late"] == 0


def test_hush_stops_sequences_and_lets_notes_ring() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(2.0)
    n = len(rig.sink.calls)
    rig.sched.hush()
    rig.run(6.0)
    assert len(rig.sink.calls) == n
    assert rig.sched.status()["sequences"] == []
    assert not rig.sched.is_playing()


def test_hush_keeps_a_pending_patch_loaded_with_nothing_of_it_started() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(1.0)
    second = patch("tempo: 60\nevents: [{at: 0, note: C2}]\n" + ARP[ARP.index("sequences:"):]
                   .replace("arp:", "bass:"))
    beat = rig.sched.load_patch(second)
    rig.sched.hush()
    assert rig.sched.patch is second and rig.sched.pending_patch is None
    rig.run(5.0)
    assert all(c.pitch != 36 for c in rig.sink.calls)  # its event never plays
    assert rig.sched.running_sequences() == []
    assert rig.sched.tempo.changes == [(0.0, 120.0), (beat, 60.0)]  # its tempo, from its bar
    rig.sched.start_sequence("bass", second.sequences["bass"])
    assert rig.sched.running_sequences() == ["bass"]


def test_play_now_goes_at_the_next_tick_with_length_in_beats() -> None:
    rig = Rig(tempo_bpm=90)
    rig.run(0.5)
    rig.sched.set_point(0.3, -0.4)
    rig.sched.play_now([64, 67], velocity=0.5, length_beats=2)
    assert rig.sink.calls == []  # nothing until the next block
    t = rig.next_tick_s
    rig.run(t + BLOCK_S / 2)
    assert [(c.pitch, c.start_s) for c in rig.sink.calls] == [(64, t), (67, t)]
    assert [(c.x, c.y) for c in rig.sink.calls] == [pytest.approx((0.3, -0.4))] * 2
    assert rig.sink.calls[0].length_s == pytest.approx(2 * 60 / 90)
    with pytest.raises(CommandError):
        rig.sched.play_now([200])


def test_glide_moves_the_current_point_and_prerenders_its_path() -> None:
    rig = Rig()
    rig.sched.play_now([60])
    rig.run(0.1)
    t0 = rig.clock.now_s
    rig.sched.glide(1.0, 0.0, 4)  # 4 beats = 2 s at 120 bpm
    rig.run(t0 + 1.0)
    x, _ = rig.sched.current_point()
    assert x == pytest.approx((rig.clock.now_s - t0) / 2.0, abs=1e-6)
    path = [r for r in rig.req.requests if r[3] == 60 and r[1] > 0]
    assert len(path) >= 16  # every quarter beat along the glide
    rig.run(t0 + 3.0)
    assert rig.sched.current_point() == (1.0, 0.0)


def test_events_and_timed_commands() -> None:
    lines: list[tuple[str, float]] = []
    rig = Rig()

    def runner(c: PatchCommand) -> None:
        line = c.line
        lines.append((line, rig.sched.committed_beat()))
        if line.startswith("tempo"):
            rig.sched.set_tempo(float(line.split()[1]))

    rig.sched.command_runner = runner
    rig.sched.load_patch(patch("""
points:
  low: [-0.5, 0.5]
events:
  - {at: 2, note: G2, timbre: low, velocity: 1.0, length: 2}
  - {at: 6, note: [C4, E4]}
commands:
  - "at low"
  - {at: 4, do: "tempo 60"}
"""))
    rig.run(6.0)
    assert [ln for ln, _ in lines] == ["at low", "tempo 60"]
    assert lines[0][1] == pytest.approx(0.0) and lines[1][1] == pytest.approx(4.0)
    got = [(c.pitch, c.start_s, c.length_s, c.velocity) for c in rig.sink.calls]
    # beat 2 at 120 bpm = 1.0 s, length 2 beats = 1 s; tempo 60 from beat 4 (2.0 s): beat 6
    # at 4.0 s.
    assert got[0] == (43, pytest.approx(1.0), pytest.approx(1.0), 1.0)
    assert [g[:2] for g in got[1:]] == [(60, pytest.approx(4.0)), (64, pytest.approx(4.0))]


def test_start_sequence_live_on_the_next_bar_and_replace() -> None:
    rig = Rig()
    rig.sched.start_sequence("a", make_sequence("a", "C4", 1.0))
    rig.run(1.1)  # beats 0..2 sent (horizon 1.3 s = beat 2.6)
    beat = rig.sched.start_sequence("a", make_sequence("a", "D4", 1.0))
    assert beat == 4.0
    rig.run(4.0)
    # C4 on beats 0..3, D4 from beat 4 (2.0 s) to beat 8 (4.0 s, inside the look-ahead)
    assert [c.pitch for c in rig.sink.calls] == [60] * 4 + [62] * 5
    assert rig.sched.status()["sequences"] == ["a"]


def test_same_calls_same_sink_calls() -> None:
    def script() -> list[Call]:
        rig = Rig(auto=False)
        for p in (60, 62, 64, 67, 71):
            rig.source.add(0.1, 0.2, p)
        rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
        rig.run(1.7)
        rig.sched.set_tempo(100)
        rig.sched.play_now([62])
        rig.run(3.3)
        rig.sched.glide(0.5, 0.5, 2)
        rig.sched.set_lookahead(0.1)
        rig.run(6.0)
        return rig.sink.calls

    first, second = script(), script()
    assert len(first) > 10
    assert first == second


def test_tempo_map_round_trip() -> None:
    tm = TempoMap(120, origin_s=1.0)
    tm.set(4.0, 60)
    tm.set(8.0, 240)
    for beat in (0.0, 2.5, 4.0, 6.0, 8.0, 11.0):
        assert tm.s_to_beat(tm.beat_to_s(beat)) == pytest.approx(beat)
    assert tm.beat_to_s(4.0) == pytest.approx(3.0)
    assert tm.beat_to_s(8.0) == pytest.approx(7.0)
    assert tm.beat_to_s(12.0) == pytest.approx(8.0)


def test_demo_patches_play_through_on_the_beat_grid() -> None:
    from pathlib import Path

    from pgesam_live.patches.schema import load_patch

    folder = Path(__file__).resolve().parents[2] / "patches"
    for f in sorted(folder.glob("*.yaml")):
        p = load_patch(f)
        length = p.length_beats()
        assert length is not None
        lines: list[str] = []
        rig = Rig()
        rig.sched.command_runner = lambda c, out=lines: out.append(c.line)
        rig.sched.load_patch(p)
        end_s = length * 60 / p.tempo_bpm
        rig.run(end_s + 1.0)
        assert not rig.sched.is_playing(), f.name
        assert len(rig.sink.calls) >= 16, f.name
        sixteenth_s = 60 / p.tempo_bpm / 4
        for c in rig.sink.calls:
            assert 0 <= c.start_s < end_s
            grid = c.start_s / sixteenth_s
            assert abs(grid - round(grid)) < 1e-6, (f.name, c)
        assert lines == [c.line for c in p.commands if c.at_beats is None] + [
            c.line for c in p.commands if c.at_beats is not None]


def test_no_renders_requested_past_a_pending_swap() -> None:
    rig = Rig()
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(2.3)
    rig.sched.load_patch(patch("events: [{at: 0, note: C3, timbre: [0.1, 0.2]}]"))
    n = len(rig.req.requests)
    rig.run(12.0)
    later = rig.req.requests[n:]
    # the old arpeggio ends at beat 8 (4.0 s): nothing of it is asked for past there
    assert all(r[5] < 4.0 - 0.2 + EXACT for r in later)
    assert [c.pitch for c in rig.sink.calls].count(48) == 1


def test_the_render_cache_is_a_note_source() -> None:
    # The real cache plugs in as it is (its keys carry .pitch; its repitch fits repitch_fn).
    from pgesam_live.render.cache import RenderCache
    from pgesam_live.render.dsp import repitch as cache_repitch

    cache = RenderCache("m", "harmonic")
    clock = Clock()
    sink, req = FakeSink(clock), FakeRequester(clock)
    sched = Scheduler(sink, cache, req, repitch_fn=cache_repitch)
    tone = np.sin(np.arange(24000) * 2 * np.pi * 220 / 24000).astype(np.float32)
    cache.put(cache.key(0.0, 0.0, 60), tone)
    cache.put(cache.key(0.0, 0.0, 62), tone)
    sched.play_now([60, 61, 80])
    sched.tick(0.0)
    assert len(sink.calls) == 2
    assert sink.calls[0].n_samples == 24000  # a hit
    assert sink.calls[1].n_samples != 24000  # 61 from 60 or 62, re-pitched
    st = sched.status()
    assert (st["late"], st["fallbacks"], st["skipped"]) == (2, 1, 1)  # 80: nothing in an octave
    assert [r[3] for r in req.requests] == [61, 80]  # the missing ones asked for at once


def test_a_second_load_on_a_fresh_clock_restores_the_tempo_the_first_replaced() -> None:
    rig = Rig(tempo_bpm=120)
    rig.run(1.0)
    rig.sched.load_patch(patch("tempo: 60\nevents: [{at: 0, note: C2}]"))
    assert rig.sched.tempo.last_bpm == 60.0
    rig.sched.load_patch(patch("tempo: 90\nevents: [{at: 0, note: D2}]"))
    assert rig.sched.tempo.last_bpm == 90.0
    rig.sched.hush()  # the second stays loaded, at its tempo, with nothing started
    rig.run(5.0)
    assert rig.sink.calls == [] and rig.sched.tempo.last_bpm == 90.0
    assert rig.sched.patch is not None and rig.sched.patch.tempo_bpm == 90.0
    # A tempo set after a load is the performer's: a later load's swap keeps it.
    rig2 = Rig(tempo_bpm=120)
    rig2.run(1.0)
    rig2.sched.load_patch(patch("tempo: 60\nevents: [{at: 0, note: C2}]"))
    rig2.sched.set_tempo(100)
    rig2.sched.hush()
    assert rig2.sched.tempo.last_bpm == 100.0


def test_notes_beyond_the_model_range_play_its_edge_re_pitched() -> None:
    """G2 on a 48..72 model: C3 (48) rendered and played 5 semitones down; requests ask for
    the edge note, never the pitch the model cannot render."""
    rig = Rig(pitch_range=(48, 72))
    rig.sched.play_now([43, 60, 79], velocity=0.7)
    rig.run(0.1)
    lengths = sorted(c.n_samples for c in rig.sink.calls)
    # The edge notes resampled: 5 semitones down is longer, 7 up is shorter (the fakes'
    # notes are 2,400 samples).
    assert lengths[1] == 2400 and len(lengths) == 3
    assert abs(lengths[0] - 2400 * 2 ** (-7 / 12)) <= 1
    assert abs(lengths[2] - 2400 * 2 ** (5 / 12)) <= 1
    assert rig.sched.status()["late"] == 0
    rig.sched.load_patch(patch('sequences:\n  s:\n    timbre: [0.1, 0.2]\n'
                               '    notes: "G2 C6"\n    step: 1\n'))
    rig.run(3.0)
    assert {r[3] for r in rig.req.requests} <= set(range(48, 73))


def test_a_loop_started_soon_after_another_stopped_joins_its_grid() -> None:
    rig = Rig(lookahead_s=0.1)
    rig.sched.load_patch(patch(ARP.replace("repeat: 1", "repeat: 0")))
    rig.run(2.3)
    rig.sched.stop_sequence("arp")
    rig.run(2.8)  # silence, under KEEP_GRID_BARS bars
    seq = rig.sched.patch.sequences["arp"]  # type: ignore[union-attr]
    beat = rig.sched.start_sequence("again", seq)
    assert beat == 8.0  # the next bar of the running grid (beat 8 = 4 s), not a fresh clock
    rig.run(4.2)
    assert rig.sink.calls[-1].start_s == pytest.approx(4.0, abs=EXACT)
    # Long silence: a fresh clock again.
    rig.sched.hush()
    rig.run(12.0)
    assert rig.sched.start_sequence("late", seq) == 0.0


def test_a_chord_naming_one_key_twice_plays_it_once() -> None:
    rig = Rig()
    rig.sched.play_now([61, 61, 64])
    rig.run(0.1)
    assert len(rig.sink.calls) == 2


def test_renders_asked_for_at_a_point_the_performer_left_are_cancelled() -> None:
    """An XY stream while a sequence plays at the current point: each move supersedes what
    was asked for at the last point (not yet due there), so renders never pile up; notes
    still due at the old point, and notes with their own timbre, keep theirs."""
    rig = Rig(auto=False, lookahead_s=0.2)
    rig.sched.start_sequence("cur", make_sequence("cur", "C4 E4 G4 C5", 0.25))
    rig.sched.start_sequence("own", make_sequence("own", "C3", 0.5, timbre=(0.5, 0.5)))
    rig.run(0.5)
    live = set()
    for i in range(60):  # 60 moves, one per block: a fast pad
        rig.sched.set_point(-0.9 + 0.03 * i, 0.1)
        rig.run(rig.next_tick_s + 0.001)
    keys = {rig.source.key(x, y, p, sd) for _, x, y, p, sd, _ in rig.req.requests}
    cancelled = set(rig.req.cancelled)
    live = keys - cancelled
    # What is still wanted is a few notes at the last points, not 60 moves' worth.
    assert len(cancelled) > 100 and len(live) < 40
    # The fixed-timbre sequence never loses its renders.
    assert not any(k.x == 0.5 and k.y == 0.5 for k in cancelled)
    # The notes about to play at the current point are still asked for.
    x, y = rig.sched.current_point()
    assert any(k.x == round(x, 3) and k.y == round(y, 3) for k in live)


def test_a_cancel_spares_keys_an_own_timbre_note_wants_and_the_point_still_held() -> None:
    rig = Rig(auto=False, lookahead_s=0.2)
    rig.sched.set_point(0.5, 0.5)
    # An own-timbre sequence at the point the performer stands on, asked first...
    rig.sched.start_sequence("own", make_sequence("own", "C4", 4.0, timbre=(0.5, 0.5)))
    rig.sched.start_sequence("cur", make_sequence("cur", "C4", 0.5))
    rig.run(0.2)
    rig.sched.set_point(-0.5, 0.1)  # ...keeps its key when the performer leaves
    rig.run(0.4)
    assert rig.source.key(0.5, 0.5, 60, 0) not in rig.req.cancelled
    # A hush re-states the point without moving: nothing at it is cancelled.
    n = len(rig.req.cancelled)
    rig.sched.hush()
    rig.run(0.6)
    x, y = rig.sched.current_point()
    assert not any((k.x, k.y) == (round(x, 3), round(y, 3)) for k in rig.req.cancelled[n:])


class FakeHeld:
    """The held-note player (engine/held.py): records what it is asked to play and follow."""

    def __init__(self) -> None:
        self.played: list[tuple[int, float]] = []  # (pitch, x of the audio)
        self.follows: list[tuple[int, float, float]] = []  # (pitch, x, y of the new audio)

    def play_held(self, audio: np.ndarray, start_s: float | None, velocity: float, pan: float,
                  tag: object, pitch: int, release_at_s: float | None = None) -> None:
        self.played.append((pitch, float(audio[1])))

    def follow(self, tag: object, audio: np.ndarray, pitch: int, at_s: float) -> None:
        self.follows.append((pitch, float(audio[1]), float(audio[2])))


def held_rig(auto: bool = True) -> tuple[Rig, FakeHeld]:
    rig = Rig(auto=auto)
    held = FakeHeld()
    rig.sched.held = held
    return rig, held


def test_follow_on_takes_the_notes_held_now_but_not_those_at_their_own_point() -> None:
    rig, held = held_rig()
    rig.sched.play_now([60], velocity=0.8, mode="hold")
    rig.sched.play_now([64], velocity=0.8, mode="hold", point=(0.5, 0.5))  # note_at
    rig.run(0.1)
    assert held.played == [(60, 0.0), (64, 0.5)] and rig.sched.followers() == []
    rig.sched.set_follow(True)  # after the keys went down
    rig.sched.set_point(0.25, -0.25)
    rig.run(0.2)
    assert held.follows == [(60, 0.25, -0.25)] and rig.sched.followers() == [60]
    rig.sched.set_follow(False)  # each stays where it is now
    rig.sched.set_point(0.0, 0.0)
    rig.run(0.3)
    assert held.follows == [(60, 0.25, -0.25)] and rig.sched.followers() == []


def test_a_held_note_started_on_a_fallback_moves_to_its_own_render_when_it_comes() -> None:
    rig, held = held_rig(auto=False)
    rig.source.add(0.0, 0.0, 62)  # only D4 is here: C4 starts on it, re-pitched
    rig.sched.play_now([60], velocity=0.8, mode="hold")
    rig.run(0.1)
    assert len(held.played) == 1 and rig.sched.counters.fallback_pitch == 1
    assert held.follows == []
    rig.source.add(0.0, 0.0, 60)  # its render comes
    rig.run(0.2)
    assert held.follows == [(60, 0.0, 0.0)]
    rig.run(0.4)
    assert len(held.follows) == 1  # once


def test_a_tempo_set_during_a_fresh_loads_pre_roll_is_kept() -> None:
    """`load P` then `tempo 20` at once: the clock's beat 0 is still a pre-roll away (the
    next beat is -1), and the tempo typed last must be the one that plays, not the patch's."""
    rig = Rig(tempo_bpm=120, preroll_s=1.0)
    rig.run(0.5)
    rig.sched.load_patch(patch("tempo: 100\nevents: [{at: 0, note: C2}, {at: 8, note: D2}]"))
    assert rig.sched.committed_beat() < -1.0
    assert rig.sched.set_tempo(20) == 0.0
    rig.run(8.0)
    assert rig.sched.tempo.changes == [(0.0, 20.0)]
    assert rig.sched.status()["tempo_bpm"] == 20
    assert rig.sched.tempo.bpm_at(rig.sched.committed_beat()) == 20.0
