"""Reading a patch file: YAML with line numbers, validated completely before anything plays;
every error names the file, the line, the key path and what is allowed
(`arp.notes: "H4" at step 3 is not a note name`). Unknown keys are errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pgesam_live.errors import CommandError, PatchError
from pgesam_live.notes import (
    NoteError,
    Step,
    midi_to_note,
    parse_notes,
    parse_pitch,
    playable_range,
    range_text,
)
from pgesam_live.patches.model import (
    CURVES,
    DEFAULT_REPEAT,
    DEFAULT_STEP_BEATS,
    DEFAULT_TEMPO_BPM,
    DEFAULT_VELOCITY,
    FORMAT_VERSION,
    GATE_MAX,
    STEP_MAX_BEATS,
    STEP_MIN_BEATS,
    XY,
    Event,
    Patch,
    PatchCommand,
    Sequence,
    Timbre,
    Trajectory,
)
from pgesam_live.patches.names import (
    command_name_errors,
)
from pgesam_live.vocab.commands import (
    NAME_RE,
    TEMPO_MAX_BPM,
    TEMPO_MIN_BPM,
    XY_LIMIT,
    Command,
    parse_line,
)

MAX_ERRORS_SHOWN = 50


class PatchValidationError(PatchError):
    """A patch with one or more errors; ``errors`` lists every one as
    ``FILE:LINE: key.path: what is wrong (what is allowed)``."""

    def __init__(self, errors: list[str]) -> None:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = len(errors) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more errors" if more > 0 else "")
        super().__init__(text)
        self.errors = list(errors)


_MISSING = object()


class _Validator:
    """Collects errors while turning a node tree into dataclasses. Every check returns None
    (and records an error) when a value is bad, so validation carries on past it."""

    def __init__(self, path: str, pitch_range: tuple[int, int] | None = None) -> None:
        self.path = path
        self.pitch_range = pitch_range
        self._found: list[tuple[int, str]] = []
        # Names defined with a bad value: already reported, so a reference to one is not
        # reported again as "undefined".
        self.broken_names: set[str] = set()
        self._constructor = SafeConstructor()

    def err(self, node: Node | None, key_path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        where = f"{key_path}: " if key_path else ""
        self._found.append((line, f"{self.path}:{line}: {where}{message}"))

    @property
    def errors(self) -> list[str]:
        """Every error so far, in file order (a stable sort keeps same-line order)."""
        return [text for _, text in sorted(self._found, key=lambda item: item[0])]

    # -- scalars

    def value(self, node: Node) -> Any:
        """A scalar node's Python value (YAML 1.1 rules, safe), or _MISSING if not a scalar."""
        if not isinstance(node, ScalarNode):
            return _MISSING
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ConstructorError, ValueError):
            return node.value

    def number(self, node: Node, key_path: str, lo: float, hi: float, what: str) -> float | None:
        v = self.value(node)
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.err(node, key_path, f"{_show(node)} is not a number ({what})")
            return None
        if not math.isfinite(v) or not lo <= v <= hi:
            self.err(node, key_path, f"{v} is out of range ({what})")
            return None
        return float(v)

    def integer(self, node: Node, key_path: str, lo: int, hi: int | None, what: str) -> int | None:
        v = self.value(node)
        if isinstance(v, bool) or not isinstance(v, int):
            self.err(node, key_path, f"{_show(node)} is not a whole number ({what})")
            return None
        if v < lo or (hi is not None and v > hi):
            self.err(node, key_path, f"{v} is out of range ({what})")
            return None
        return v

    def string(self, node: Node, key_path: str, what: str) -> str | None:
        v = self.value(node)
        if not isinstance(v, str) or not v.strip():
            self.err(node, key_path, f"{_show(node)} is not a text value ({what})")
            return None
        return v

    def boolean(self, node: Node, key_path: str) -> bool | None:
        v = self.value(node)
        if not isinstance(v, bool):
            self.err(node, key_path, f"{_show(node)} is not true or false")
            return None
        return v

    def name(self, node: Node, key_path: str) -> str | None:
        v = self.value(node)
        if not isinstance(v, str) or not NAME_RE.match(v):
            self.err(node, key_path, f"{_show(node)} is not a name (letters, digits, _ . or -)")
            return None
        return v

    def xy(self, node: Node, key_path: str) -> XY | None:
        if isinstance(node, SequenceNode) and len(node.value) != 2:
            n = len(node.value)
            self.err(node, key_path, f"a list of {n} value{'s' * (n != 1)} is not a point: "
                     "give [x, y], two numbers")
            return None
        if not isinstance(node, SequenceNode):
            self.err(node, key_path, f"{_show(node)} is not a point [x, y]")
            return None
        what = f"x and y lie in [-{XY_LIMIT}, {XY_LIMIT}], nominally [-1, 1]"
        x = self.number(node.value[0], key_path + "[0]", -XY_LIMIT, XY_LIMIT, what)
        y = self.number(node.value[1], key_path + "[1]", -XY_LIMIT, XY_LIMIT, what)
        if x is None or y is None:
            return None
        return (x, y)

    def pitches_in_range(self, node: Node, key_path: str, steps: tuple[Step, ...],
                         what: str = "at step") -> bool:
        """Every pitch of `steps` playable with the model's range (when known: the range and
        an octave beyond, re-pitched); one error per pitch outside it."""
        if self.pitch_range is None:
            return True
        lo, hi = playable_range(self.pitch_range)
        ok = True
        for i, step in enumerate(steps):
            for p in step:
                if not lo <= p <= hi:
                    where = f" {what} {i + 1}" if len(steps) > 1 else ""
                    self.err(node, key_path, f"{midi_to_note(p)} ({p}){where} is outside what "
                             f"the model plays: {range_text(self.pitch_range)}")
                    ok = False
        return ok

    # -- collections

    def is_null(self, node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"

    def mapping(
        self,
        node: Node,
        key_path: str,
        allowed: tuple[str, ...] | None,
        required: tuple[str, ...] = (),
    ) -> dict[str, tuple[Node, Node]] | None:
        """Keys of a mapping node -> (key node, value node); checks unknown, duplicate and
        missing keys. ``allowed`` None accepts any name-shaped key (user-named entries)."""
        if self.is_null(node) and allowed is None:
            return {}  # `points:` with nothing under it: an empty section
        if not isinstance(node, MappingNode):
            self.err(node, key_path, f"{_show(node)} is not a mapping of key: value")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            key = self.value(knode)
            sub = f"{key_path}.{key}" if key_path else str(key)
            if not isinstance(key, str):
                self.err(knode, key_path or str(key), f"key {_show(knode)} is not a name")
                continue
            if key in out:
                self.err(knode, sub, "duplicate key (each key appears once)")
                continue
            if allowed is not None and key not in allowed:
                self.err(knode, sub, f"unknown key; allowed: {', '.join(allowed)}")
                continue
            if allowed is None and not NAME_RE.match(key):
                self.err(knode, sub, "is not a name (letters, digits, _ . or -)")
                continue
            out[key] = (knode, vnode)
        for key in required:
            if key not in out:
                sub = f"{key_path}.{key}" if key_path else key
                self.err(node, sub, "is required")
        return out

    def sequence_node(self, node: Node, key_path: str, what: str) -> list[Node] | None:
        if self.is_null(node):
            return []  # `events:` with nothing under it: an empty section
        if not isinstance(node, SequenceNode):
            self.err(node, key_path, f"{_show(node)} is not a list ({what})")
            return None
        return list(node.value)


def _show(node: Node) -> str:
    if isinstance(node, ScalarNode):
        text = node.value if len(node.value) <= 60 else node.value[:57] + "..."
        return f'"{text}"' if node.value else "an empty value"
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a list"


_TOP_KEYS = ("pgesam", "tempo", "model", "seed", "points", "trajectories", "sequences",
             "events", "commands")


_TRAJ_KEYS = ("keys", "curve", "loop")


_SEQ_KEYS = ("timbre", "notes", "step", "velocity", "gate", "start", "repeat")


_EVENT_KEYS = ("at", "note", "timbre", "velocity", "length")


_CMD_KEYS = ("at", "do")


_VEL_WHAT = "velocity is 0..1"


def parse_patch(text: str, path: str = "<patch>",
                pitch_range: tuple[int, int] | None = None,
                known_points: Collection[str] | None = None,
                known_sequences: Collection[str] = ()) -> Patch:
    """Validate a patch's YAML text completely and build it; raises PatchValidationError
    listing every error as ``path:line: key.path: message``. With ``pitch_range`` (the model's
    MIDI range, inclusive) every pitch it plays must lie in it; ``commands:`` lines are read
    with the command table either way. With ``known_points`` (the point names that exist
    outside the patch: bookmarks, the model's named points) the names its commands use are
    checked too (``known_sequences``: sequences running outside it, which it may stop)."""
    try:
        root = yaml.compose(text)
    except RecursionError:
        raise PatchValidationError([f"{path}:1: lists or mappings nested too deeply for a "
                                    "patch; flatten them"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PatchValidationError(
            [f"{path}:{line}: not valid YAML: {problem} (check indentation and quotes)"]
        ) from None
    v = _Validator(path, pitch_range)
    if root is None:
        raise PatchValidationError([f"{path}:1: the patch is empty; it starts with 'pgesam: 1'"])
    top = v.mapping(root, "", _TOP_KEYS, required=("pgesam",))
    if top is None:
        raise PatchValidationError(v.errors)

    if "pgesam" in top:
        node = top["pgesam"][1]
        ver = v.value(node)
        if isinstance(ver, str) and ver.strip() == str(FORMAT_VERSION):
            v.err(node, "pgesam", f"version {_show(node)} is quoted text; write the number "
                  f"without quotes: 'pgesam: {FORMAT_VERSION}'")
        elif isinstance(ver, bool) or ver != FORMAT_VERSION:
            v.err(node, "pgesam", f"version {_show(node)} is not supported; this build reads "
                  f"'pgesam: {FORMAT_VERSION}'")
    tempo = DEFAULT_TEMPO_BPM
    if "tempo" in top:
        t = v.number(top["tempo"][1], "tempo", TEMPO_MIN_BPM, TEMPO_MAX_BPM,
                     f"beats per minute, {TEMPO_MIN_BPM:g}..{TEMPO_MAX_BPM:g}")
        tempo = t if t is not None else tempo
    model = "default"
    if "model" in top:
        m = v.string(top["model"][1], "model", "a checkpoint name or path")
        model = m if m is not None else model
    seed = 0
    if "seed" in top:
        s = v.integer(top["seed"][1], "seed", 0, 2**31 - 1, "a render seed, 0..2147483647")
        seed = s if s is not None else seed

    points = _points(v, top)
    trajectories = _trajectories(v, top, points)
    for name in set(points) & set(trajectories):
        v.err(top["trajectories"][1], f"trajectories.{name}",
              "has the same name as a point; a timbre name must say which one it means")

    def resolve(node: Node, key_path: str) -> tuple[Timbre, str | None, bool]:
        """A timbre reference -> (timbre, name, ok)."""
        if isinstance(node, SequenceNode):
            xy = v.xy(node, key_path)
            return xy, None, xy is not None
        ref = v.value(node)
        if isinstance(ref, str) and ref in points:
            return points[ref], ref, True
        if isinstance(ref, str) and ref in trajectories:
            return trajectories[ref], ref, True
        if isinstance(ref, str) and ref in v.broken_names:
            return None, None, False
        known = ", ".join(sorted(points) + sorted(trajectories)) or "none in this patch"
        v.err(node, key_path, f"{_show(node)} is not a defined point or trajectory, nor "
              f"[x, y]; defined: {known}")
        return None, None, False

    sequences = _sequences(v, top, resolve)
    events = _events(v, top, resolve)
    commands = _commands(v, top)
    if known_points is not None:
        _check_command_names(v, commands, points, sequences, known_points, known_sequences,
                             trajectories)
    if v.errors:
        raise PatchValidationError(v.errors)
    return Patch(path=path, tempo_bpm=tempo, model=model, seed=seed, points=points,
                 trajectories=trajectories, sequences=sequences, events=events,
                 commands=tuple(PatchCommand(line=c.line, at_beats=c.at_beats, command=c.cmd)
                                for c in commands))


def _points(v: _Validator, top: dict[str, tuple[Node, Node]]) -> dict[str, XY]:
    points: dict[str, XY] = {}
    if "points" not in top:
        return points
    entries = v.mapping(top["points"][1], "points", None)
    for name, (_, vnode) in (entries or {}).items():
        xy = v.xy(vnode, f"points.{name}")
        if xy is not None:
            points[name] = xy
        else:
            v.broken_names.add(name)
    return points


def _trajectories(
    v: _Validator, top: dict[str, tuple[Node, Node]], points: dict[str, XY]
) -> dict[str, Trajectory]:
    out: dict[str, Trajectory] = {}
    if "trajectories" not in top:
        return out
    entries = v.mapping(top["trajectories"][1], "trajectories", None)
    for name, (_, tnode) in (entries or {}).items():
        path = f"trajectories.{name}"
        fields = v.mapping(tnode, path, _TRAJ_KEYS, required=("keys",))
        if fields is None:
            continue
        ok = True
        keys: list[tuple[float, XY]] = []
        if "keys" in fields:
            items = v.sequence_node(fields["keys"][1], f"{path}.keys", "[beat, point] pairs")
            if items is None:
                ok = False
            elif not items:
                v.err(fields["keys"][1], f"{path}.keys", "needs at least one [beat, point]")
                ok = False
            for i, item in enumerate(items or []):
                kpath = f"{path}.keys[{i}]"
                if not isinstance(item, SequenceNode) or len(item.value) != 2:
                    v.err(item, kpath, f"{_show(item)} is not a [beat, point name or [x, y]]")
                    ok = False
                    continue
                beat = v.number(item.value[0], kpath + "[0]", 0.0, 1e6, "a beat >= 0")
                pnode = item.value[1]
                xy: XY | None
                if isinstance(pnode, SequenceNode):
                    xy = v.xy(pnode, kpath + "[1]")
                else:
                    ref = v.value(pnode)
                    xy = points.get(ref) if isinstance(ref, str) else None
                    if xy is None and ref not in v.broken_names:
                        known = ", ".join(sorted(points)) or "none in this patch"
                        v.err(pnode, kpath + "[1]", f"{_show(pnode)} is not a defined point "
                              f"nor [x, y]; points: {known}")
                if beat is None or xy is None:
                    ok = False
                    continue
                if keys and beat <= keys[-1][0]:
                    v.err(item.value[0], kpath + "[0]",
                          f"beat {beat:g} is not after the previous key's {keys[-1][0]:g} "
                          "(key beats increase)")
                    ok = False
                    continue
                keys.append((beat, xy))
        curve = "linear"
        if "curve" in fields:
            c = v.value(fields["curve"][1])
            if c not in CURVES:
                v.err(fields["curve"][1], f"{path}.curve",
                      f"{_show(fields['curve'][1])} is not a curve; allowed: {', '.join(CURVES)}")
                ok = False
            else:
                curve = c
        loop = False
        if "loop" in fields:
            lp = v.boolean(fields["loop"][1], f"{path}.loop")
            ok = ok and lp is not None
            loop = bool(lp)
        if ok and loop and keys and keys[-1][0] <= 0:
            v.err(fields["loop"][1], f"{path}.loop",
                  "a looping trajectory needs a last key after beat 0 (its period)")
            ok = False
        if ok and keys:
            out[name] = Trajectory(name=name, keys=tuple(keys), curve=curve, loop=loop)
        else:
            v.broken_names.add(name)
    return out


_Resolver = Callable[[Node, str], tuple[Timbre, str | None, bool]]


def _velocity(v: _Validator, node: Node, path: str) -> tuple[float, ...] | None:
    if isinstance(node, SequenceNode):
        if not node.value:
            v.err(node, path, "an empty list; give a number 0..1 or a list of them")
            return None
        vals = [v.number(n, f"{path}[{i}]", 0.0, 1.0, _VEL_WHAT) for i, n in enumerate(node.value)]
        if any(x is None for x in vals):
            return None
        return tuple(x for x in vals if x is not None)
    x = v.number(node, path, 0.0, 1.0, _VEL_WHAT + ", or a list of them cycled over the steps")
    return None if x is None else (x,)


def _sequences(
    v: _Validator, top: dict[str, tuple[Node, Node]], resolve: _Resolver
) -> dict[str, Sequence]:
    out: dict[str, Sequence] = {}
    if "sequences" not in top:
        return out
    entries = v.mapping(top["sequences"][1], "sequences", None)
    for name, (_, snode) in (entries or {}).items():
        path = f"sequences.{name}"
        fields = v.mapping(snode, path, _SEQ_KEYS, required=("notes",))
        if fields is None:
            continue
        ok = "notes" in fields  # a missing one is already reported
        pattern: tuple[Step, ...] = ()
        notes_text = ""
        if "notes" in fields:
            nnode = fields["notes"][1]
            raw = v.value(nnode)
            if isinstance(raw, int) and not isinstance(raw, bool):
                raw = str(raw)  # a single MIDI number is a one-step pattern
            listed = isinstance(nnode, SequenceNode)
            if isinstance(nnode, SequenceNode):  # [C4, 64, "~", [C4, E4]]: one step each
                raw = _notes_from_list(v, nnode, f"{path}.notes")
            if listed and raw is None:
                ok = False  # the bad step is reported
            elif not isinstance(raw, str):
                v.err(nnode, f"{path}.notes", f'{_show(nnode)} is not a note string '
                      '(e.g. "C4 E4 G4 ~ [C4 E4]")')
                ok = False
            else:
                try:
                    pattern = parse_notes(raw)
                    notes_text = raw
                except NoteError as exc:
                    v.err(nnode, f"{path}.notes", str(exc))
                    ok = False
                else:
                    ok = v.pitches_in_range(nnode, f"{path}.notes", pattern) and ok
        step = DEFAULT_STEP_BEATS
        if "step" in fields:
            s = v.number(fields["step"][1], f"{path}.step", STEP_MIN_BEATS, STEP_MAX_BEATS,
                         f"beats per step, {STEP_MIN_BEATS:g}..{STEP_MAX_BEATS:g}")
            ok = ok and s is not None
            step = s if s is not None else step
        velocity: tuple[float, ...] = (DEFAULT_VELOCITY,)
        if "velocity" in fields:
            vel = _velocity(v, fields["velocity"][1], f"{path}.velocity")
            ok = ok and vel is not None
            velocity = vel if vel is not None else velocity
        gate: float | None = None
        if "gate" in fields:
            gate = v.number(fields["gate"][1], f"{path}.gate", 1e-3, GATE_MAX,
                            f"a fraction of the step, > 0 and <= {GATE_MAX:g}")
            ok = ok and gate is not None
        start = 0.0
        if "start" in fields:
            st = v.number(fields["start"][1], f"{path}.start", 0.0, 1e6, "a beat >= 0")
            ok = ok and st is not None
            start = st if st is not None else start
        repeat = DEFAULT_REPEAT
        if "repeat" in fields:
            r = v.integer(fields["repeat"][1], f"{path}.repeat", 0, None,
                          "a count >= 0; 0 = until stopped")
            ok = ok and r is not None
            repeat = r if r is not None else repeat
        timbre: Timbre = None
        timbre_name: str | None = None
        if "timbre" in fields:
            timbre, timbre_name, t_ok = resolve(fields["timbre"][1], f"{path}.timbre")
            ok = ok and t_ok
        if ok:
            out[name] = Sequence(
                name=name, notes=notes_text, pattern=pattern,
                step_beats=step, velocity=velocity, gate=gate, start_beats=start,
                repeat=repeat, timbre=timbre, timbre_name=timbre_name,
            )
    # Defined with a bad value (reported there): not "undefined" where a line names it.
    v.broken_names.update(name for name in (entries or {}) if name not in out)
    return out


def _notes_from_list(v: _Validator, node: SequenceNode, path: str) -> str | None:
    """A YAML list of steps as a note string: a note, a number or ~ per step, a list for a
    chord. None for anything else, the step named (`notes[1]: 64.5 is not a note ...`)."""
    words: list[str] = []
    what = "a note name (E4), a whole MIDI number (64) or ~ (a rest)"
    for i, item in enumerate(node.value):
        if isinstance(item, SequenceNode):
            inner = [v.value(n) for n in item.value]
            bad = [n for n, x in zip(item.value, inner, strict=True)
                   if isinstance(x, bool) or not isinstance(x, str | int)]
            if not inner or bad:
                v.err(bad[0] if bad else item, f"{path}[{i}]",
                      f"{_show(bad[0])} is not a note in a chord: give {what}" if bad else
                      "an empty chord: give its notes, e.g. [C4, E4]")
                return None
            words.append("[" + " ".join(str(x) for x in inner) + "]")
            continue
        x = v.value(item)
        if isinstance(x, bool) or not isinstance(x, str | int):
            v.err(item, f"{path}[{i}]", f"{_show(item)} is not a note: give {what}")
            return None
        words.append(str(x))
    return " ".join(words)


def _event_pitches(v: _Validator, node: Node, path: str) -> Step | None:
    nodes = node.value if isinstance(node, SequenceNode) else [node]
    if not nodes:
        v.err(node, path, "an empty chord; give a note (C4, 60) or a list of notes")
        return None
    pitches: list[int] = []
    for i, n in enumerate(nodes):
        sub = f"{path}[{i}]" if isinstance(node, SequenceNode) else path
        raw = v.value(n)
        try:
            if raw is _MISSING:
                raise NoteError("")
            pitches.append(parse_pitch(raw))
        except NoteError:
            v.err(n, sub, f"{_show(n)} is not a note (C4 = 60, F#3, Bb2, or 0..127)")
            return None
    return tuple(pitches)


def _events(v: _Validator, top: dict[str, tuple[Node, Node]], resolve: _Resolver
            ) -> tuple[Event, ...]:
    out: list[Event] = []
    if "events" not in top:
        return ()
    items = v.sequence_node(top["events"][1], "events", "of {at, note, ...} mappings")
    for i, enode in enumerate(items or []):
        path = f"events[{i}]"
        fields = v.mapping(enode, path, _EVENT_KEYS, required=("at", "note"))
        if fields is None:
            continue
        ok = "at" in fields and "note" in fields
        at = None
        if "at" in fields:
            at = v.number(fields["at"][1], f"{path}.at", 0.0, 1e6, "a beat >= 0")
            ok = ok and at is not None
        pitches = None
        if "note" in fields:
            pitches = _event_pitches(v, fields["note"][1], f"{path}.note")
            ok = ok and pitches is not None
            if pitches is not None:
                ok = v.pitches_in_range(fields["note"][1], f"{path}.note", (pitches,)) and ok
        velocity = DEFAULT_VELOCITY
        if "velocity" in fields:
            vel = v.number(fields["velocity"][1], f"{path}.velocity", 0.0, 1.0, _VEL_WHAT)
            ok = ok and vel is not None
            velocity = vel if vel is not None else velocity
        length = None
        if "length" in fields:
            length = v.number(fields["length"][1], f"{path}.length", 1e-3, 1e6,
                              "a length in beats > 0")
            ok = ok and length is not None
        timbre: Timbre = None
        timbre_name = None
        if "timbre" in fields:
            timbre, timbre_name, t_ok = resolve(fields["timbre"][1], f"{path}.timbre")
            ok = ok and t_ok
        if ok and at is not None and pitches is not None:
            out.append(Event(at_beats=at, pitches=pitches, velocity=velocity,
                             length_beats=length, timbre=timbre, timbre_name=timbre_name))
    # Sorted by beat (stable): the scheduler walks them in order.
    return tuple(sorted(out, key=lambda e: e.at_beats))


def _command_line(v: _Validator, node: Node, path: str) -> tuple[str, Command] | None:
    """One REPL line, read with the command table (a typo is an error now, not when the
    patch reaches it); its pitches checked against the model's range."""

    line = v.string(node, path, "a REPL line, e.g. \"at glass\"")
    if line is not None and ("\n" in line or "\r" in line):
        v.err(node, path, "is more than one line; give one REPL line per entry")
        return None
    if line is None:
        return None
    try:
        cmd = parse_line(line)
    except CommandError as exc:
        v.err(node, path, str(exc))
        return None
    if not cmd.journal:
        v.err(node, path, f"`{cmd.name}` only answers at the REPL; a patch cannot use it")
        return None
    a = cmd.args
    pitches = [*a.get("pitches", ()), *(a[k] for k in ("pitch", "low", "high")
                                        if a.get(k) is not None)]
    if cmd.name != "release" and not v.pitches_in_range(node, path, (tuple(pitches),)):
        return None
    return line.strip(), cmd


@dataclass(frozen=True)
class _ReadCommand:
    node: Node
    path: str
    line: str
    cmd: Command
    at_beats: float | None


def _commands(v: _Validator, top: dict[str, tuple[Node, Node]]) -> list[_ReadCommand]:
    """The `commands:` entries that read, in the order they run: load-time ones first (in
    file order), then timed ones by beat (stable)."""
    out: list[_ReadCommand] = []
    if "commands" not in top:
        return []
    items = v.sequence_node(top["commands"][1], "commands",
                            'of REPL lines or {at: BEAT, do: "LINE"}')
    for i, cnode in enumerate(items or []):
        path = f"commands[{i}]"
        if isinstance(cnode, MappingNode):
            fields = v.mapping(cnode, path, _CMD_KEYS, required=("at", "do"))
            if fields is None or "at" not in fields or "do" not in fields:
                continue
            at = v.number(fields["at"][1], f"{path}.at", 0.0, 1e6, "a beat >= 0")
            read = _command_line(v, fields["do"][1], f"{path}.do")
            if at is not None and read is not None:
                out.append(_ReadCommand(fields["do"][1], f"{path}.do", *read, at))
        else:
            read = _command_line(v, cnode, path)
            if read is not None:
                out.append(_ReadCommand(cnode, path, *read, None))
    untimed = [c for c in out if c.at_beats is None]
    timed = sorted((c for c in out if c.at_beats is not None), key=lambda c: c.at_beats or 0.0)
    return untimed + timed


def _check_command_names(v: _Validator, commands: list[_ReadCommand], points: Collection[str],
                         sequences: Collection[str], known_points: Collection[str],
                         known_sequences: Collection[str],
                         trajectories: Collection[str]) -> None:
    """command_name_errors on the read lines, each error at its line and key path."""
    # (Names defined with a bad value are reported there, not again here.)
    found = command_name_errors([(c.cmd, c.at_beats) for c in commands], points,
                                set(sequences) | v.broken_names,
                                set(known_points) | v.broken_names, known_sequences,
                                trajectories)
    for k, message in found:
        v.err(commands[k].node, commands[k].path, message)


def load_patch(path: str | Path, pitch_range: tuple[int, int] | None = None,
               known_points: Collection[str] | None = None,
               known_sequences: Collection[str] = ()) -> Patch:
    """Read and validate a patch file (pitches within ``pitch_range`` when given, command
    names against ``known_points``/``known_sequences``: see parse_patch); errors name the
    file as given."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PatchError(f"{p}: no such patch file (see the patches/ folder)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PatchError(f"{p}: cannot read the patch ({exc.__class__.__name__}); "
                         "is it a UTF-8 YAML file?") from None
    return parse_patch(text, str(path), pitch_range, known_points, known_sequences)


def load_target_errors(patch: Patch, folder: str | Path, confined: bool = False,
                       pitch_range: tuple[int, int] | None = None) -> list[str]:
    """The patch's `load` lines whose patch will not load: missing (found as `load` finds it:
    find_patch in `folder`, `confined` as for the source that runs the line) or itself
    invalid as a file (its names are checked when it loads, against the state then); each as
    `FILE: commands: "LINE": message`. The targets' own `load` lines are not followed (two
    patches may load each other in turn)."""
    from pgesam_live.patches.files import find_patch  # noqa: PLC0415

    out: list[str] = []
    for c in patch.commands:
        cmd = c.parsed()
        if cmd.name != "load":
            continue
        where = f"{patch.path}: commands: \"{c.line}\""
        try:
            target = find_patch(str(cmd.args["patch"]), folder, confined=confined)
            load_patch(target, pitch_range)
        except PatchValidationError as exc:
            out.append(f"{where}: that patch has errors, first: {exc.errors[0]}")
        except PatchError as exc:
            out.append(f"{where}: {exc}")
    return out
