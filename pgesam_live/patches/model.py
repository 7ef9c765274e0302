"""The patch as data: points, trajectories (timbre moving in musical time), sequences, events, its
command lines (parsed at load), and `make_sequence` for a sequence made at the REPL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pgesam_live.errors import CommandError
from pgesam_live.notes import (
    Step,
    format_notes,
    parse_notes,
)
from pgesam_live.vocab.commands import (
    NAME_RE,
    STEP_MAX_BEATS,
    STEP_MIN_BEATS,
    XY_LIMIT,
    Command,
    parse_line,
)

FORMAT_VERSION = 1


GATE_MAX = 16.0         # gate > 1 overlaps the next step (legato pads); 16 steps is plenty


DEFAULT_TEMPO_BPM = 120.0


DEFAULT_STEP_BEATS = 0.5


DEFAULT_VELOCITY = 0.8


DEFAULT_REPEAT = 1


CURVES = ("linear", "smooth")




XY = tuple[float, float]


def _smoothstep(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class Trajectory:
    """Timbre moving in musical time: ``keys`` are (beat, (x, y)) with strictly increasing
    beats. Before the first key the point is the first key's; after the last it holds the
    last, unless ``loop`` repeats the whole path every ``keys[-1][0]`` beats."""

    name: str
    keys: tuple[tuple[float, XY], ...]
    curve: str = "linear"
    loop: bool = False

    @property
    def period_beats(self) -> float:
        return self.keys[-1][0]

    def at(self, beat: float) -> XY:
        """The (x, y) point at ``beat`` (beats from the trajectory's origin)."""
        keys = self.keys
        if self.loop and self.period_beats > 0:
            beat = beat % self.period_beats
        if beat <= keys[0][0]:
            return keys[0][1]
        if beat >= keys[-1][0]:
            return keys[-1][1]
        for (b0, p0), (b1, p1) in zip(keys, keys[1:], strict=False):
            if b0 <= beat < b1:
                t = (beat - b0) / (b1 - b0)
                if self.curve == "smooth":
                    t = _smoothstep(t)
                return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)
        return keys[-1][1]  # not reached: the loop above covers [first, last)


# Where a note's timbre comes from: a fixed point, a trajectory sampled at the note's onset,
# or None for the performer's current point.
Timbre = XY | Trajectory | None


def timbre_at(timbre: Timbre, beat: float) -> XY | None:
    """The point of ``timbre`` at ``beat`` (beats from the owner's origin); None = current."""
    if timbre is None:
        return None
    if isinstance(timbre, Trajectory):
        return timbre.at(beat)
    return timbre


@dataclass(frozen=True)
class SeqStep:
    """One expanded step of a sequence. ``index`` counts steps from 0 over all passes
    (velocity lists cycle over it); ``offset_beats`` is from the sequence's origin and
    includes ``start``; a rest has no pitches."""

    index: int
    offset_beats: float
    pitches: Step
    velocity: float
    length_beats: float | None


@dataclass(frozen=True)
class Sequence:
    """A repeating pattern of steps. ``pattern`` is the parsed ``notes``; ``repeat`` 0 means
    until stopped; ``gate`` None means each note plays its full one-shot."""

    name: str
    notes: str
    pattern: tuple[Step, ...]
    step_beats: float = DEFAULT_STEP_BEATS
    velocity: tuple[float, ...] = (DEFAULT_VELOCITY,)
    gate: float | None = None
    start_beats: float = 0.0
    repeat: int = DEFAULT_REPEAT
    timbre: Timbre = None
    timbre_name: str | None = None

    @property
    def total_steps(self) -> int | None:
        """Steps over all passes; None when it repeats until stopped."""
        return None if self.repeat == 0 else self.repeat * len(self.pattern)

    @property
    def length_beats(self) -> float | None:
        """Beats from the origin to the end of the last step; None = until stopped."""
        total = self.total_steps
        return None if total is None else self.start_beats + total * self.step_beats

    def step_at(self, index: int) -> SeqStep:
        """The step with global number ``index`` (0-based, over all passes)."""
        length = None if self.gate is None else self.gate * self.step_beats
        return SeqStep(
            index=index,
            offset_beats=self.start_beats + index * self.step_beats,
            pitches=self.pattern[index % len(self.pattern)],
            velocity=self.velocity[index % len(self.velocity)],
            length_beats=length,
        )

    def steps(self, passes: int = 1) -> tuple[SeqStep, ...]:
        """The first ``passes`` passes of the pattern, expanded (rests included)."""
        if passes < 0:
            raise ValueError("passes must be >= 0")
        return tuple(self.step_at(i) for i in range(passes * len(self.pattern)))

    def timbre_at(self, offset_beats: float) -> XY | None:
        return timbre_at(self.timbre, offset_beats)


@dataclass(frozen=True)
class Event:
    """A single note (or chord) at ``at_beats`` from the patch origin."""

    at_beats: float
    pitches: Step
    velocity: float = DEFAULT_VELOCITY
    length_beats: float | None = None
    timbre: Timbre = None
    timbre_name: str | None = None


@dataclass(frozen=True)
class PatchCommand:
    """A REPL line from ``commands:``, parsed once at load (``command``); ``line`` is the
    patch's own words (for messages); ``at_beats`` None = run when the patch starts."""

    line: str
    at_beats: float | None = None
    command: Command | None = None

    def parsed(self) -> Command:
        return self.command if self.command is not None else parse_line(self.line)


@dataclass(frozen=True)
class Patch:
    path: str
    tempo_bpm: float = DEFAULT_TEMPO_BPM
    model: str = "default"
    seed: int = 0
    points: Mapping[str, XY] = field(default_factory=dict)
    trajectories: Mapping[str, Trajectory] = field(default_factory=dict)
    sequences: Mapping[str, Sequence] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    commands: tuple[PatchCommand, ...] = ()

    def summary(self) -> str:
        """What loading it brings: `morph.yaml: tempo 100; starts motif (8 times); 2 events;
        commands: at glass; points glass, reed`."""
        import os  # noqa: PLC0415

        parts = [f"tempo {self.tempo_bpm:g}"]
        if self.sequences:
            seqs = [f"{n} ({'looping' if q.repeat == 0 else f'{q.repeat} times'})"
                    for n, q in self.sequences.items()]
            parts.append("starts " + ", ".join(seqs))
        else:
            parts.append("starts no sequence")
        if self.events:
            parts.append(f"{len(self.events)} event{'s' if len(self.events) != 1 else ''}")
        if self.commands:
            shown = [c.line for c in self.commands[:3]]
            more = f" (+{len(self.commands) - 3})" if len(self.commands) > 3 else ""
            parts.append("commands: " + "; ".join(shown) + more)
        if self.points:
            parts.append("points " + ", ".join(self.points))
        return f"{os.path.basename(self.path)}: " + "; ".join(parts)

    def length_beats(self) -> float | None:
        """Beats until the last sequence step, event or timed command ends; None when a
        sequence repeats until stopped. Looping trajectories do not count (they only colour
        notes)."""
        end = 0.0
        for seq in self.sequences.values():
            seq_end = seq.length_beats
            if seq_end is None:
                return None
            end = max(end, seq_end)
        for ev in self.events:
            end = max(end, ev.at_beats + (ev.length_beats or 0.0))
        for cmd in self.commands:
            if cmd.at_beats is not None:
                end = max(end, cmd.at_beats)
        return end


def make_sequence(
    name: str,
    notes: str,
    step_beats: float = DEFAULT_STEP_BEATS,
    *,
    velocity: float | tuple[float, ...] = DEFAULT_VELOCITY,
    gate: float | None = None,
    start_beats: float = 0.0,
    repeat: int = 0,
    timbre: Timbre = None,
    timbre_name: str | None = None,
) -> Sequence:
    """A Sequence from REPL-style arguments (``seq NAME "NOTES" STEP``), validated with the
    patch rules; raises CommandError (NoteError for the notes). Repeats until stopped by
    default, as a live ``seq`` should."""
    if not NAME_RE.match(name):
        raise CommandError(f"sequence name {name!r}: use letters, digits, _ or -")
    pattern = parse_notes(notes)
    if not STEP_MIN_BEATS <= step_beats <= STEP_MAX_BEATS:
        raise CommandError(f"step {step_beats}: use a number of beats in "
                           f"{STEP_MIN_BEATS:g}..{STEP_MAX_BEATS:g}")
    vels = (velocity,) if isinstance(velocity, int | float) else tuple(velocity)
    if not vels or any(not 0.0 <= v <= 1.0 for v in vels):
        raise CommandError(f"velocity {velocity}: use 0..1 (or a list of them)")
    if gate is not None and not 0 < gate <= GATE_MAX:
        raise CommandError(f"gate {gate}: use a fraction of the step in (0, {GATE_MAX:g}]")
    if start_beats < 0:
        raise CommandError(f"start {start_beats}: use a beat >= 0")
    if repeat < 0:
        raise CommandError(f"repeat {repeat}: use a count >= 0 (0 = until stopped)")
    if isinstance(timbre, tuple) and any(abs(c) > XY_LIMIT for c in timbre):
        raise CommandError(f"timbre {timbre}: x and y must lie in [-1.5, 1.5]")
    return Sequence(
        name=name, notes=format_notes(pattern), pattern=pattern, step_beats=float(step_beats),
        velocity=tuple(float(v) for v in vels), gate=None if gate is None else float(gate),
        start_beats=float(start_beats), repeat=int(repeat), timbre=timbre,
        timbre_name=timbre_name,
    )
