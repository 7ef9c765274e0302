"""The one command table: every word a performer can say, from any front end.

Parsing (shell-style, quoted note strings), validation messages that name what is allowed,
completion candidates, help text, the OSC mapping and the journal's text form all come from
`COMMANDS`, in the manner of mido's message-spec table. A `Command` is plain data:
`Command(name, args)`; `parse_line(cmd.to_line()) == cmd` for every valid command.

Argument kinds (ranges are inclusive unless noted):
  coord     timbre coordinate, float in [-1.5, 1.5]
  unit      float in [0, 1] (a pad position)
  velocity  float in [0, 1]
  bpm       float in [20, 400]
  beats     float > 0 (at most 1024)
  step      float > 0 (at most 64): a sequence's beats per step
  seconds   float > 0 (at most 60)
  lookahead float in [0.01, 5] seconds
  gain      float in [0, 2], linear master gain (1 = unity)
  gate      float > 0 (at most 16): a note's length as a fraction of its step
  pitch     MIDI note 0..127, a whole number or a note name (C4 = 60, F#3, Bb2)
  name      an identifier: letter or _, then letters, digits, _ . - (at most 64)
  point     a point name (completion: the engine's point names), or a bookmark's digit 1..9
            as the terminal map draws it (`at 1`)
  seq       a sequence name (completion: the engine's sequence names)
  patch     a patch file under the patch folder
  file      a file to write (`map png FILE`)
  notes     a note string: names or numbers, ~ rest, [..] chord
  command   a command name (for `help`)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pgesam_live.errors import CommandError
from pgesam_live.notes import note_to_midi, parse_notes, pitch_range_message

# --------------------------------------------------------------------------------------------
# the limits: the one source every layer reads (the scheduler, patches, settings)

XY_LIMIT = 1.5            # the latent plane is nominally [-1, 1]; a little overshoot is allowed
TEMPO_MIN_BPM = 20.0
TEMPO_MAX_BPM = 400.0
BEATS_MAX = 1024.0        # a length or glide in beats
STEP_MIN_BEATS = 1e-3     # a sequence's shortest step: finer ones would flood the audio thread
STEP_MAX_BEATS = 64.0     # a sequence's step (the same in a patch and at the REPL)
SECONDS_MAX = 60.0        # a note length in seconds
LOOKAHEAD_MIN_S = 0.01
LOOKAHEAD_MAX_S = 5.0
NAME_MAX_CHARS = 64
GATE_MAX = 16.0           # a sequence's gate, a fraction of its step (> 1 overlaps the next)
DEFAULT_STEP_BEATS = 0.5  # `seq NAME "NOTES"` without a step, as a patch's sequence
GAIN_MAX = 2.0            # master gain, linear (1 = as rendered; the limiter still guards)
# A name (point, sequence, trajectory, bookmark): a letter or _, then letters, digits, _ . -
NAME_RE = re.compile(rf"^[A-Za-z_][A-Za-z0-9_.\-]{{0,{NAME_MAX_CHARS - 1}}}$")


# --------------------------------------------------------------------------------------------
# the table


class PitchRangeError(CommandError):
    """A pitch beyond MIDI's 0..127. The table does not know the model: whoever does (the
    engine, the seam, OSC) calls `with_range` so every front end says one thing."""

    def __init__(self, where: str, pitch: int) -> None:
        super().__init__(pitch_range_message(where, pitch, None))
        self.where = where
        self.pitch = pitch

    def with_range(self, rendered: tuple[int, int] | None) -> CommandError:
        return CommandError(pitch_range_message(self.where, self.pitch, rendered))


@dataclass(frozen=True)
class Arg:
    """One argument. `keyword` (e.g. "vel") makes it `vel V` anywhere after the positionals."""

    name: str
    kind: str
    help: str = ""
    optional: bool = False
    default: Any = None
    keyword: str | None = None
    variadic: bool = False

    @property
    def meta(self) -> str:
        base = self.name.upper() + (".." if self.variadic else "")
        if self.keyword:
            base = f"{self.keyword} {base}"
        return f"[{base}]" if self.optional or self.keyword else base


@dataclass(frozen=True)
class Form:
    """One way to say a command; `osc` is the OSC address taking these args positionally."""

    args: tuple[Arg, ...]
    osc: str | None = None

    @property
    def positionals(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.keyword is None)

    @property
    def keywords(self) -> dict[str, Arg]:
        return {a.keyword: a for a in self.args if a.keyword is not None}


@dataclass(frozen=True)
class Spec:
    """A command: its forms, help, and whether it enters the journal (changes the performance)."""

    name: str
    forms: tuple[Form, ...]
    help: str
    journal: bool = True
    check: Callable[[dict[str, Any]], None] | None = None

    def usage(self) -> str:
        return " | ".join(
            " ".join([self.name, *(a.meta for a in f.args)]) for f in self.forms)


def _check_prerender(args: dict[str, Any]) -> None:
    low, high = args.get("low"), args.get("high")
    if (low is None) != (high is None):
        raise CommandError("prerender: give both LOW and HIGH pitches, or neither")
    if low is not None and high is not None and low > high:
        raise CommandError(f"prerender: LOW {low} is above HIGH {high}")


MAP_FORMATS = ("png", "svg", "pdf")


def _check_map(args: dict[str, Any]) -> None:
    fmt, file = args.get("format"), args.get("file")
    if fmt is not None and fmt.lower() not in MAP_FORMATS:
        raise CommandError(f"map: {fmt!r} is not a picture format; `map` draws in the terminal, "
                           f"`map png FILE` writes a picture ({', '.join(MAP_FORMATS)})")
    if fmt is not None and file is not None and not file.lower().endswith("." + fmt.lower()):
        raise CommandError(f"map {fmt}: name the file ...{'.' + fmt.lower()} (got {file!r})")


def _check_seq(args: dict[str, Any]) -> None:
    if args.get("gate") is not None and args.get("len_beats") is not None:
        raise CommandError("seq: give `gate` (a fraction of the step) or `len` (beats), "
                           "not both")


_X = Arg("x", "coord", "timbre x, -1.5..1.5")
_Y = Arg("y", "coord", "timbre y, -1.5..1.5")
_VEL_OPT = Arg("vel", "velocity", "velocity 0..1", optional=True, default=0.8)
_LEN_S_OPT = Arg("len_s", "seconds", f"length in seconds, at most {SECONDS_MAX:g} (default: "
                 "the full one-shot; `hold` instead: until `release`, any length)",
                 optional=True)

HOLD_MODES = ("hold", "follow")
_HOLD_MODE = Arg("mode", "name", "hold (until `release P`) or follow (held, following the point)")


def _check_hold_mode(args: dict[str, Any]) -> None:
    mode = args.get("mode")
    if mode is not None and mode not in HOLD_MODES:
        raise CommandError(f"note: {mode!r} is not a mode; use `hold` (until `release P`) or "
                           "`follow` (held, the timbre following the point)")


def _check_follow_state(args: dict[str, Any]) -> None:
    if args["state"] not in ("on", "off"):
        raise CommandError(f"follow: {args['state']!r}: use `follow on` or `follow off`")


_SPECS: list[Spec] = [
    Spec("at", (Form((_X, _Y), "/pgesam/timbre"),
                Form((Arg("name", "point", "a point or bookmark name, a bookmark's digit "
                          "on the map, or a training instrument (a word of its program)"),),
                     "/pgesam/point")),
         "set the timbre point: `at 0.4 -0.3`, `at glass`, `at 1` (bookmark 1 on the map), "
         "or a training instrument's: `at piano`, `at violin`, `at elec-bass`"),
    Spec("xy", (Form((Arg("u", "unit", "pad x 0..1"), Arg("v", "unit", "pad y 0..1")),
                     "/pgesam/xy"),),
         "set the timbre from a 0..1 pad laid over the map's region (what `map` and the web "
         "page show): `xy 0.5 0.5` is its middle"),
    Spec("play", (Form((Arg("pitches", "pitch", "notes to play together", variadic=True),
                        Arg("vel", "velocity", "velocity 0..1", default=0.8, keyword="vel"),
                        Arg("len_beats", "beats", "length in beats (default: full one-shot)",
                            keyword="len"))),),
         "play notes now at the current point: `play C4 E4 G4 vel 0.6 len 2`"),
    Spec("note", (Form((Arg("pitch", "pitch"), _VEL_OPT, _LEN_S_OPT), "/pgesam/note"),
                  Form((Arg("pitch", "pitch"), Arg("vel", "velocity", "velocity 0..1"),
                        _HOLD_MODE))),
         "play one note at the current point: `note 60 0.8 1.5` (length in seconds); "
         "`note C4 0.8 hold` holds it until `release C4`, `note C4 0.8 follow` also follows "
         "the point while it sounds", check=_check_hold_mode),
    Spec("note_at", (Form((_X, _Y, Arg("pitch", "pitch"), _VEL_OPT, _LEN_S_OPT),
                          "/pgesam/note_at"),
                     Form((_X, _Y, Arg("pitch", "pitch"),
                           Arg("vel", "velocity", "velocity 0..1"), _HOLD_MODE))),
         "play one note at a point without moving it: `note_at 0.2 0.1 C4 0.9` (`... hold` "
         "until `release C4`)", check=_check_hold_mode),
    Spec("follow", (Form((Arg("state", "name", "on or off"),), "/pgesam/follow"),),
         "held notes follow the timbre point while they sound: `follow on` (or per note: "
         "`note C4 0.8 follow`)", check=_check_follow_state),
    Spec("release", (Form((Arg("pitch", "pitch"),), "/pgesam/release"),),
         "end a held note (a MIDI note off): `release C4`"),
    Spec("seq", (Form((Arg("name", "name", "a new or running sequence's name"),
                       Arg("notes", "notes", 'quoted note string, e.g. "C4 E4 [G4 B4] ~"'),
                       Arg("step", "step", "beats per step", optional=True,
                           default=DEFAULT_STEP_BEATS),
                       Arg("vel", "velocity", "velocity 0..1", default=0.8, keyword="vel"),
                       Arg("gate", "gate", "note length as a fraction of the step "
                           "(default: the full one-shot)", keyword="gate"),
                       Arg("len_beats", "beats", "note length in beats (instead of gate)",
                           keyword="len"),
                       Arg("at", "point", "play at this point or trajectory (default: "
                           "the current point)", keyword="at")), "/pgesam/seq"),),
         'start (or replace) a looping sequence at the current point: `seq arp "C4 E4 G4 ~" '
         '0.5 vel 0.6 gate 0.5 at glass` (step default 0.5 beat)', check=_check_seq),
    Spec("start", (Form((Arg("name", "seq", "a sequence from the patch"),), "/pgesam/seq/start"),),
         "start a sequence defined in the loaded patch: `start arp`"),
    Spec("stop", (Form((Arg("name", "seq", "a running sequence"),), "/pgesam/seq/stop"),),
         "stop one sequence (its sounding notes ring out): `stop arp`"),
    Spec("glide", (Form((_X, _Y, Arg("beats", "beats", "duration in beats")), "/pgesam/glide"),),
         "move the timbre point to X Y over BEATS: `glide 0.5 0.5 8`"),
    Spec("tempo", (Form((Arg("bpm", "bpm", "beats per minute, 20..400"),), "/pgesam/tempo"),),
         "set the tempo: `tempo 96`"),
    Spec("load", (Form((Arg("patch", "patch", "a patch file under the patch folder"),),
                       "/pgesam/patch"),),
         "load a patch (a bad one leaves the running patch untouched): "
         "`load drift-arpeggio.yaml`"),
    Spec("mark", (Form((Arg("name", "name", "bookmark name"),), "/pgesam/mark"),),
         "bookmark the current point under NAME (then `at NAME`): `mark nice`"),
    Spec("hush", (Form((), "/pgesam/hush"),), "stop every sequence and glide; notes ring out"),
    Spec("panic", (Form((), "/pgesam/panic"),), "silence everything now"),
    Spec("prerender", (Form((_X, _Y, Arg("low", "pitch", "lowest pitch", optional=True),
                             Arg("high", "pitch", "highest pitch", optional=True)),
                            "/pgesam/prerender"),),
         "render a point's notes ahead of time (default: the model's whole pitch range); "
         "OSC answers /pgesam/ready x y pitch per note", check=_check_prerender),
    Spec("lookahead", (Form((Arg("seconds", "lookahead", "0.01..5 seconds"),),
                            "/pgesam/lookahead"),),
         "set how far ahead sequences are rendered and scheduled: `lookahead 0.25`"),
    Spec("gain", (Form((Arg("level", "gain", "linear master gain 0..2 (1 = unity)"),),
                       "/pgesam/gain"),),
         "set the master gain, every voice at once (sounding notes too): `gain 0.5`"),
    Spec("map", (Form((Arg("format", "name", "png, svg or pdf: write a picture instead",
                           optional=True),
                       Arg("file", "file", "the picture's file (default: map-MODEL.png)",
                           optional=True))),),
         "draw the timbre map in the terminal (@ = current point, * named points, digits "
         "bookmarks), or as a picture: `map png my-map.png`", journal=False,
         check=_check_map),
    Spec("status", (Form(()),), "show the engine state (also on the status line)",
         journal=False),
    Spec("points", (Form(()),), "list point names and bookmarks", journal=False),
    Spec("seqs", (Form(()),), "list sequences (running ones marked *)", journal=False),
    Spec("help", (Form((Arg("command", "command", "a command", optional=True),)),),
         "list commands, or explain one: `help play`", journal=False),
    Spec("keys", (Form((Arg("len_beats", "beats", "each note's length in beats", optional=True,
                            default=1.0),
                        Arg("vel", "velocity", "velocity 0..1", default=0.8, keyword="vel"))),),
         "the terminal's keyboard plays: a w s e d f t g y h u j k = C4..C5, z / x octave, "
         "arrows move the point (shift: further), Escape or Enter leaves: `keys 0.5`",
         journal=False),
    Spec("export", (Form(()), Form((Arg("dir", "path", "a folder for the WAVs and the SFZ"),))),
         "the current point as a multisample (24-bit WAVs + an SFZ file, in the background): "
         "`export` (into the sessions folder) or `export DIR`", journal=False),
    Spec("save", (Form((Arg("name", "name", "a name for this session's journal"),)),),
         "keep this session's journal as sessions/NAME.jsonl (every session is journalled "
         "already; replay it with `pgesam-live replay sessions/NAME.jsonl`): `save my-jam`",
         journal=False),
    Spec("quit", (Form(()),), "leave the instrument (the journal is closed)", journal=False),
]

COMMANDS: dict[str, Spec] = {s.name: s for s in _SPECS}

#: OSC address -> (command name, form index) for every mapped form.
OSC_ADDRESSES: dict[str, tuple[str, int]] = {
    f.osc: (s.name, i) for s in _SPECS for i, f in enumerate(s.forms) if f.osc is not None
}

_NUMERIC_RANGES: dict[str, tuple[float, float, bool]] = {
    # kind: (low, high, low_exclusive)
    "coord": (-XY_LIMIT, XY_LIMIT, False),
    "unit": (0.0, 1.0, False),
    "velocity": (0.0, 1.0, False),
    "bpm": (TEMPO_MIN_BPM, TEMPO_MAX_BPM, False),
    "beats": (0.0, BEATS_MAX, True),
    "step": (STEP_MIN_BEATS, STEP_MAX_BEATS, False),
    "seconds": (0.0, SECONDS_MAX, True),
    "lookahead": (LOOKAHEAD_MIN_S, LOOKAHEAD_MAX_S, False),
    "gain": (0.0, GAIN_MAX, False),
    "gate": (0.0, GATE_MAX, True),
}
_NAME_KINDS = ("name", "point", "seq", "command")


# --------------------------------------------------------------------------------------------
# the command value


@dataclass(frozen=True)
class Command:
    """A validated command. `args` holds every argument of its form (defaults filled in);
    pitches are MIDI ints, numbers floats, names and paths strings."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Spec:
        return COMMANDS[self.name]

    @property
    def journal(self) -> bool:
        return COMMANDS[self.name].journal

    def form(self) -> Form:
        return _form_of(self.name, self.args)

    def to_line(self) -> str:
        """The canonical REPL line (what the journal stores); parse_line() gives it back."""
        form = self.form()
        words = [self.name]
        pos = form.positionals
        # trailing optional positionals equal to their default are left out
        last = len(pos)
        while last > 0 and pos[last - 1].optional and self.args.get(pos[last - 1].name) == \
                pos[last - 1].default:
            last -= 1
        for a in pos[:last]:
            words.extend(_format_value(a, self.args.get(a.name)))
        for kw, a in form.keywords.items():
            value = self.args.get(a.name)
            if value is not None and value != a.default:
                words.append(kw)
                words.extend(_format_value(a, value))
        return " ".join(words)


def _form_of(name: str, args: dict[str, Any]) -> Form:
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError(f"unknown command {name!r}; `help` lists them")
    for f in spec.forms:
        required = {a.name for a in f.args if not (a.optional or a.keyword)}
        allowed = {a.name for a in f.args}
        if required <= set(args) and set(args) <= allowed:
            return f
    raise CommandError(f"{name}: arguments {sorted(args)} fit no form of `{spec.usage()}`")


def _format_number(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))  # shortest text that reads back to the same float


def _quote(text: str) -> str:
    if text and re.fullmatch(r"[A-Za-z0-9_.\-/+#~:,@%=]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format_value(a: Arg, value: Any) -> list[str]:
    if a.variadic:
        return [_format_value(Arg(a.name, a.kind), v)[0] for v in value]
    if a.kind in _NUMERIC_RANGES or a.kind == "pitch":
        return [_format_number(value)]
    return [_quote(str(value))]


# --------------------------------------------------------------------------------------------
# conversion and validation


def _shortest(value: float) -> float:
    """An OSC float32 (0.2 arrives as 0.20000000298023224) as the shortest decimal that is the
    same float32, so journals and replies read `0.2`; other values are kept as they are."""
    if not math.isfinite(value) or value != float(np.float32(value)):
        return value
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _to_number(a: Arg, raw: Any, where: str) -> float:
    if isinstance(raw, bool):
        raise CommandError(f"{where}: {a.name} must be a number, got a boolean")
    if isinstance(raw, int | float):
        value = _shortest(float(raw))
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            hint = (f"; a held note gives its velocity first: `{where} C4 0.8 {raw}`"
                    if a.name == "vel" and raw in HOLD_MODES else "")
            raise CommandError(f"{where}: {a.name} must be a number, got {raw!r}{hint}") \
                from None
    else:
        raise CommandError(f"{where}: {a.name} must be a number, got {type(raw).__name__}")
    if not math.isfinite(value):
        raise CommandError(f"{where}: {a.name} must be a finite number, got {raw!r}")
    return value


def convert_arg(a: Arg, raw: Any, where: str, *, from_osc: bool = False) -> Any:
    """One raw value (a REPL token, or an OSC int/float/str) -> the checked value.

    OSC numbers must arrive as int or float; a string where a number belongs is a type error
    there (a REPL token is always a string and is read as a number)."""
    if a.kind in _NUMERIC_RANGES:
        if from_osc and isinstance(raw, str):
            raise CommandError(f"{where}: {a.name} must be an int or float, got string {raw!r}")
        value = _to_number(a, raw, where)
        lo, hi, lo_excl = _NUMERIC_RANGES[a.kind]
        if value > hi or value < lo or (lo_excl and value == lo):
            rng = f"> {_format_number(lo)} and <= {_format_number(hi)}" if lo_excl else \
                f"{_format_number(lo)}..{_format_number(hi)}"
            raise CommandError(f"{where}: {a.name} {_format_number(value)} is out of range {rng}")
        return value
    if a.kind == "pitch":
        if isinstance(raw, str) and not re.fullmatch(r"-?\d+(\.0*)?", raw.strip()):
            try:
                midi = note_to_midi(raw)
            except CommandError as exc:
                raise CommandError(f"{where}: {exc}") from None
        else:
            number = _to_number(a, raw, where)
            if not number.is_integer():
                raise CommandError(f"{where}: {a.name} {raw!r} is not a whole MIDI note number")
            midi = int(number)
        if not 0 <= midi <= 127:
            raise PitchRangeError(where, midi)
        return midi
    if a.kind == "point" and not isinstance(raw, bool) and isinstance(raw, int | str) and \
            re.fullmatch(r"[1-9]", str(raw).strip()):
        return str(raw).strip()  # a bookmark's digit on the terminal map: `at 1`
    if not isinstance(raw, str):
        raise CommandError(f"{where}: {a.name} must be a string, got {type(raw).__name__}")
    if a.kind in _NAME_KINDS:
        if not NAME_RE.match(raw):
            raise CommandError(f"{where}: {a.name} {raw!r} is not a name (letters, digits, _ . -;"
                               " starting with a letter)")
        if a.kind == "command" and raw not in COMMANDS:
            raise CommandError(f"{where}: unknown command {raw!r}; `help` lists them")
        return raw
    if a.kind == "notes":
        try:
            parse_notes(raw)
        except CommandError as exc:
            raise CommandError(f"{where}: notes: {exc}") from None
        return raw
    if a.kind == "file":
        if not raw.strip() or any(ord(c) < 32 for c in raw):
            raise CommandError(f"{where}: {a.name} must be a file name, e.g. my-map.png")
        return raw
    if a.kind == "patch":
        if not raw.strip() or any(ord(c) < 32 for c in raw):
            raise CommandError(f"{where}: {a.name} must be a patch file name, e.g. ambient.yaml")
        return raw
    if a.kind == "path":
        if not raw.strip() or any(ord(c) < 32 for c in raw):
            raise CommandError(f"{where}: {a.name} must be a folder, e.g. exports/glass")
        return raw
    raise CommandError(f"{where}: internal: unknown argument kind {a.kind!r}")  # table bug


def _is_number(raw: Any) -> bool:
    if isinstance(raw, bool):
        return False
    if isinstance(raw, int | float):
        return True
    try:
        float(raw)
    except (TypeError, ValueError):
        return False
    return True


class _FormMismatch(CommandError):
    def __init__(self, message: str, depth: int) -> None:
        super().__init__(message)
        self.depth = depth


def _bind(spec: Spec, form: Form, tokens: Sequence[Any], *, from_osc: bool) -> dict[str, Any]:
    where = spec.name
    kw = form.keywords
    positional: list[Any] = []
    given_kw: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(tok, str) and tok in kw and not from_osc:
            if i + 1 >= len(tokens):
                raise _FormMismatch(f"{where}: `{tok}` needs a value (usage: {spec.usage()})", i)
            if tok in given_kw:
                raise _FormMismatch(f"{where}: `{tok}` given twice; give it once", i)
            given_kw[tok] = tokens[i + 1]
            i += 2
            continue
        if given_kw:
            raise _FormMismatch(f"{where}: {tok!r} after keyword arguments (usage: "
                                f"{spec.usage()})", i)
        positional.append(tok)
        i += 1
    args: dict[str, Any] = {}
    k = 0
    for depth, a in enumerate(form.positionals):
        if a.variadic:
            rest = positional[k:]
            if not rest and not a.optional:
                raise _FormMismatch(f"{where}: missing {a.name.upper()} (usage: {spec.usage()})",
                                    depth)
            args[a.name] = [convert_arg(Arg(a.name, a.kind), r, where, from_osc=from_osc)
                            for r in rest]
            k = len(positional)
            continue
        if k < len(positional):
            try:
                args[a.name] = convert_arg(a, positional[k], where, from_osc=from_osc)
            except PitchRangeError:
                raise  # the same words whichever form it was meant for (the engine adds the range)
            except CommandError as exc:
                # A number that is out of range or not finite was meant for this form
                # (`at nan nan`, `at 5 0`): its error beats "too many" from another form.
                meant = a.kind in _NUMERIC_RANGES and _is_number(positional[k])
                raise _FormMismatch(str(exc), len(form.positionals) + 1 if meant else depth) \
                    from None
            k += 1
        elif a.optional:
            args[a.name] = a.default
        else:
            raise _FormMismatch(f"{where}: missing {a.name.upper()} (usage: {spec.usage()})",
                                depth)
    if k < len(positional):
        n = len(form.positionals)
        raise _FormMismatch(f"{where}: too many arguments ({len(positional)} given, at most {n}; "
                            f"usage: {spec.usage()})", len(form.positionals))
    for word, a in kw.items():
        if word in given_kw:  # (named as typed: `len -1`, not the argument's inner name)
            args[a.name] = convert_arg(dataclasses.replace(a, name=word), given_kw[word], where,
                                       from_osc=from_osc)
        else:
            args[a.name] = a.default
    if spec.check is not None:
        spec.check(args)
    return args


def _build(spec: Spec, tokens: Sequence[Any], *, from_osc: bool,
           forms: Iterable[Form] | None = None) -> Command:
    best: _FormMismatch | None = None
    for form in forms if forms is not None else spec.forms:
        try:
            return Command(spec.name, _bind(spec, form, tokens, from_osc=from_osc))
        except _FormMismatch as exc:
            if best is None or exc.depth > best.depth:
                best = exc
    assert best is not None
    notes_form = next((f for f in spec.forms if any(a.kind == "notes" for a in f.args)), None)
    if notes_form is not None and len(tokens) > len(notes_form.positionals):
        raise CommandError(f"{best} (quote the notes: {spec.name} NAME \"C4 E4 G4 ~\" STEP)")
    raise CommandError(str(best))


_SPACE_CONTROLS = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def split_line(line: str) -> list[str]:
    """Shell-style words: double or single quotes group a note string."""
    # (The separators str.split also takes as white space stay allowed: older journals.)
    bad = next((ch for ch in line if ord(ch) < 32 and ch not in _SPACE_CONTROLS
                or ord(ch) == 127), None)
    if bad is not None:
        raise CommandError(f"the line holds a control character {bad!r} at column "
                           f"{line.index(bad) + 1}; send plain text")
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError as exc:
        raise CommandError(f"cannot read the line: {exc} (close the quote)") from None


# Words performers bring from other instruments -> what this one calls it.
_SYNONYMS = {"record": "save NAME (every session is journalled already; `save` names it)",
             "rec": "save NAME", "stop-all": "hush or panic", "stopall": "hush or panic",
             "volume": "gain", "vol": "gain"}


def parse_line(line: str) -> Command:
    """A REPL / journal / `/pgesam/cmd` line -> a validated Command (raises CommandError)."""
    words = split_line(line)
    if not words:
        raise CommandError("empty line; `help` lists the commands")
    name = words[0].lower()
    spec = COMMANDS.get(name)
    if spec is None:
        near = [c for c in COMMANDS if c.startswith(name[:2])] if len(name) >= 2 else []
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        if name in _SYNONYMS:
            hint = f" (did you mean {_SYNONYMS[name]}?)"
        shown = words[0] if len(words[0]) <= 40 else words[0][:37] + "..."
        raise CommandError(f"unknown command {shown!r}{hint}; `help` lists them")
    return _build(spec, words[1:], from_osc=False)


def validate(cmd: Command) -> Command:
    """Check a Command built in code (MIDI's mapper, a test) against the table: the rules of
    a typed line (its form, each argument's kind and range, the command's own check), on the
    values themselves, with no text round trip; defaults filled in. What it returns is what
    `parse_line(cmd.to_line())` gives (to_line writes numbers exactly): journal and replay
    agree with what was applied."""
    spec = COMMANDS.get(cmd.name)
    if spec is None:
        raise CommandError(f"unknown command {cmd.name!r}; `help` lists them")
    form = _form_of(cmd.name, {k: v for k, v in cmd.args.items() if v is not None})
    args: dict[str, Any] = {}
    for a in form.args:
        raw = cmd.args.get(a.name)
        word = next((w for w, k in form.keywords.items() if k is a), None)
        named = dataclasses.replace(a, name=word) if word is not None else a
        if raw is None:
            if not (a.optional or a.keyword or a.variadic):
                raise CommandError(f"{spec.name}: missing {a.name.upper()} (usage: "
                                   f"{spec.usage()})")
            args[a.name] = [] if a.variadic and a.default is None and not a.optional \
                else a.default
        elif a.variadic:
            if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
                raise CommandError(f"{spec.name}: {a.name} must be a list")
            if not raw and not a.optional:
                raise CommandError(f"{spec.name}: missing {a.name.upper()} (usage: "
                                   f"{spec.usage()})")
            args[a.name] = [convert_arg(Arg(a.name, a.kind), r, spec.name, from_osc=True)
                            for r in raw]
        else:
            args[a.name] = convert_arg(named, raw, spec.name, from_osc=True)
    if spec.check is not None:
        spec.check(args)
    return Command(cmd.name, args)


def from_osc(address: str, osc_args: Sequence[Any]) -> Command:
    """An OSC message -> a validated Command. Ints and floats are both accepted where a number
    is; NaN, inf, out-of-range values, wrong counts and wrong types raise CommandError."""
    target = OSC_ADDRESSES.get(address)
    if target is None:
        near = difflib.get_close_matches(address, list(OSC_ADDRESSES), n=2, cutoff=0.75)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise CommandError(f"unknown address {address}; {hint}the addresses: /pgesam/cmd, "
                           f"/pgesam/status, /pgesam/hello, /pgesam/bye, "
                           f"{', '.join(sorted(OSC_ADDRESSES))} (README, OSC)")
    name, index = target
    spec = COMMANDS[name]
    # An address also takes its command's forms that have no address of their own with as
    # many leading arguments: `/pgesam/note 60 0.8 hold` is `note 60 0.8 hold`.
    own = spec.forms[index]
    extra = [f for f in spec.forms if f.osc is None
             and [a.name for a in f.positionals[:len(own.positionals) - 1]]
             == [a.name for a in own.positionals[:len(own.positionals) - 1]]]
    return _build(spec, list(osc_args), from_osc=True, forms=[own, *extra])


def osc_usage(address: str) -> str:
    name, index = OSC_ADDRESSES[address]
    return " ".join([address, *(a.meta for a in COMMANDS[name].forms[index].args)])


# --------------------------------------------------------------------------------------------
# help


def help_text(name: str | None = None) -> str:
    """`help` (every command, one line each) or `help CMD` (usage, arguments, OSC address)."""
    if name is None:
        width = max(len(n) for n in COMMANDS)
        lines = [f"{n:<{width}}  {s.help}" for n, s in COMMANDS.items()]
        lines.append("pitches take note names (C4, F#3, Bb2) or MIDI numbers; `help CMD` for more")
        return "\n".join(lines)
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError(f"unknown command {name!r}; `help` lists them")
    lines = [f"usage: {spec.usage()}", f"  {spec.help}"]
    seen: set[str] = set()
    for f in spec.forms:
        for a in f.args:
            if a.name in seen:
                continue
            seen.add(a.name)
            extra = f" (default {a.default})" if a.default is not None else ""
            lines.append(f"  {a.meta.strip('[]'):<14} {a.help or a.kind}{extra}")
        if f.osc:
            # (keywords are the REPL's: OSC takes the positionals; the rest via /pgesam/cmd)
            kw = f" (keywords via /pgesam/cmd \"{spec.name} ...\")" if f.keywords else ""
            lines.append(f"  OSC: {' '.join([f.osc, *(a.name for a in f.positionals)])}{kw}")
        elif spec.journal and any(g.osc for g in spec.forms):
            form_usage = " ".join([spec.name, *(a.meta for a in f.args)])
            lines.append(f'  OSC: /pgesam/cmd "{form_usage}"')
    if not any(f.osc for f in spec.forms):
        reply = _CMD_REPLIES.get(name)
        lines.append(f'  OSC: /pgesam/cmd "{name} ..."' if spec.journal and name != "quit" else
                     f'  OSC: /pgesam/cmd "{name}" answers {reply}' if reply else
                     "  OSC: not available (the terminal's word)")
    if name == "status":
        lines.append("  OSC: /pgesam/status answers /pgesam/state too")
    if not spec.journal:
        lines.append("  (a front-end word: not journalled)")
    return "\n".join(lines)


# What /pgesam/cmd answers for the front-end words (see frontends/osc.py).
_CMD_REPLIES = {"status": "/pgesam/state", "help": "/pgesam/help", "map": "/pgesam/map",
                "points": "/pgesam/points", "seqs": "/pgesam/seqs",
                "export": "/pgesam/export, then /pgesam/export/progress and /done or /error "
                          "(a NAME: into the sessions folder)"}
