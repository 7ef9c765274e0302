"""MIDI front end (mido with python-rtmidi): `--midi PORT|auto`.

Mapping (the defaults; change them with PGESAM_MIDI_CC_X / PGESAM_MIDI_CC_Y or the
MidiMapping arguments):
  note on (velocity > 0)  -> `note PITCH VEL hold` at the current point, VEL = velocity / 127
  note off / note on 0    -> `release PITCH` (deferred while the sustain pedal is down)
  CC1  (mod wheel)        -> timbre x  \\  sent as `xy U V` with U, V = value / 127 across
  CC74 (brightness knob)  -> timbre y  /   the map's region (vocab/mapview.py: what `map`
                                           and the web page show), coalesced (latest wins,
                                           at most every 10 ms)
  CC64 (sustain pedal)    -> >= 64 holds note offs; < 64 releases the held notes
  CC123 (all notes off)   -> releases every sounding note;  CC120 (all sound off) -> `panic`
  CC121 (reset controllers) -> the pedal up (releases what it held)
CC74 is the usual "timbre" knob (MPE's Y axis) and more keyboards have it than CC2 (breath).
A controller moves its own axis from where the point is (set from the REPL, OSC or a patch),
the other stays. A pending move is sent before a note, so "turn the knob, strike the key"
sounds at the new point. Every channel is heard (PGESAM_MIDI_CHANNEL=1..16 picks one); pitch
bend, program change and aftertouch are ignored. A note the engine refuses (outside what the
model plays) is said above the prompt, and its key-up is not sent.
Every command is submitted with src "midi", so it is journalled like any other.
A port that disappears (the keyboard unplugged) lets go of its keys down and under the pedal
(journalled `release P`, as their key-ups would have been) and says so; when a port of that
name comes back (its ALSA client number may change) it is opened again and said.

`MidiMapper` is the pure message -> commands mapping (tests feed it mido.Message objects);
`MidiInput` binds it to a port. A missing backend or port is one ConfigError line, never a
crash; `list_ports()` is what `pgesam-live doctor` prints.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgesam_live.errors import ConfigError
from pgesam_live.quiet import quiet_c_stderr
from pgesam_live.vocab.commands import Command
from pgesam_live.vocab.views import EngineView, view_region

SUSTAIN_CC = 64
ALL_SOUND_OFF_CC = 120
RESET_CONTROLLERS_CC = 121
ALL_NOTES_OFF_CC = 123

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MidiMapping:
    cc_x: int = 1
    cc_y: int = 74
    channel: int | None = None   # 0..15 to listen to one channel; None = all

    def __post_init__(self) -> None:
        for name, cc in (("cc_x", self.cc_x), ("cc_y", self.cc_y)):
            if not 0 <= cc <= 127 or cc in (SUSTAIN_CC, ALL_SOUND_OFF_CC, RESET_CONTROLLERS_CC,
                                            ALL_NOTES_OFF_CC):
                raise ConfigError(f"MIDI {name} {cc} must be a controller 0..127 other than "
                                  "64, 120, 121, 123")
        if self.cc_x == self.cc_y:
            raise ConfigError(f"MIDI cc_x and cc_y are both {self.cc_x}; choose two controllers")
        if self.channel is not None and not 0 <= self.channel <= 15:
            raise ConfigError(f"MIDI channel {self.channel} must be 0..15 (or none for all)")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> MidiMapping:
        env = dict(os.environ if env is None else env)
        try:
            channel = env.get("PGESAM_MIDI_CHANNEL")
            return cls(cc_x=int(env.get("PGESAM_MIDI_CC_X", "1")),
                       cc_y=int(env.get("PGESAM_MIDI_CC_Y", "74")),
                       channel=int(channel) - 1 if channel else None)
        except ValueError:
            raise ConfigError("PGESAM_MIDI_CC_X / PGESAM_MIDI_CC_Y must be numbers 0..127, "
                              "PGESAM_MIDI_CHANNEL 1..16") from None


@dataclass
class MidiMapper:
    """mido messages -> Commands. Keeps the keys held, the sustain pedal and the pad (u, v)."""

    mapping: MidiMapping = field(default_factory=MidiMapping)
    u: float = 0.5
    v: float = 0.5
    sustain: bool = False
    held: set[int] = field(default_factory=set)        # keys down
    sustained: set[int] = field(default_factory=set)   # keys up, held by the pedal

    def handle(self, msg: Any) -> list[Command]:
        channel = getattr(msg, "channel", None)
        if self.mapping.channel is not None and channel != self.mapping.channel:
            return []
        kind = msg.type
        if kind == "note_on" and msg.velocity > 0:
            self.held.add(msg.note)
            self.sustained.discard(msg.note)
            return [Command("note", {"pitch": msg.note, "vel": msg.velocity / 127,
                                     "mode": "hold"})]
        if kind == "note_off" or (kind == "note_on" and msg.velocity == 0):
            self.held.discard(msg.note)
            if self.sustain:
                self.sustained.add(msg.note)
                return []
            return [Command("release", {"pitch": msg.note})]
        if kind == "control_change":
            return self._control(msg.control, msg.value)
        return []

    def _control(self, control: int, value: int) -> list[Command]:
        if control == self.mapping.cc_x:
            self.u = value / 127
            return [self.xy()]
        if control == self.mapping.cc_y:
            self.v = value / 127
            return [self.xy()]
        if control == RESET_CONTROLLERS_CC:
            control, value = SUSTAIN_CC, 0  # the pedal comes up
        if control == SUSTAIN_CC:
            down = value >= 64
            if down == self.sustain:
                return []
            self.sustain = down
            if down:
                return []
            released = sorted(self.sustained - self.held)
            self.sustained.clear()
            return [Command("release", {"pitch": p}) for p in released]
        if control == ALL_NOTES_OFF_CC:
            sounding = sorted(self.held | self.sustained)
            self.held.clear()
            self.sustained.clear()
            return [Command("release", {"pitch": p}) for p in sounding]
        if control == ALL_SOUND_OFF_CC:
            self.held.clear()
            self.sustained.clear()
            return [Command("panic", {})]
        return []

    def xy(self) -> Command:
        return Command("xy", {"u": self.u, "v": self.v})

    def let_go(self) -> list[Command]:
        """The port is gone: its keys down and under the pedal are released, the pedal up."""
        sounding = sorted(self.held | self.sustained)
        self.held.clear()
        self.sustained.clear()
        self.sustain = False
        return [Command("release", {"pitch": p}) for p in sounding]


def port_base(name: str) -> str:
    """A port's name without ALSA's client:port numbers ("Keystation 49 MIDI 1 20:0" ->
    "Keystation 49 MIDI 1"): a device plugged in again may get another client number."""
    return re.sub(r"\s+\d+:\d+$", "", name)


def list_ports() -> tuple[list[str], str | None]:
    """(input port names, None) or ([], one line saying why MIDI is unavailable)."""
    try:
        import mido
    except ImportError:
        return [], "MIDI unavailable: mido is not installed (pip install mido python-rtmidi)"
    try:
        with quiet_c_stderr():
            names = list(mido.get_input_names())
    except ImportError:
        return [], "MIDI unavailable: python-rtmidi is not installed (pip install python-rtmidi)"
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [], f"MIDI unavailable: {first} (no ALSA sequencer or MIDI service on this machine)"
    return names, None


def resolve_port(spec: str, inputs: list[str]) -> str:
    """`auto` -> the first input that is not a "Through" port; else an exact name, or a
    case-insensitive part of exactly one name."""
    if spec == "auto":
        real = [n for n in inputs if "through" not in n.lower()]
        if not real:
            raise ConfigError("no MIDI input found for --midi auto; connect a device "
                              "(`pgesam-live doctor` lists ports) or leave --midi out")
        return real[0]
    if spec in inputs:
        return spec
    matches = [n for n in inputs if spec.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(repr(n) for n in inputs) or "none"
    what = "matches several ports" if matches else "is not an input port"
    raise ConfigError(f"MIDI port {spec!r} {what}; inputs: {known}")


class MidiInput:
    """A MIDI input port feeding the engine. Notes are submitted from rtmidi's thread as they
    arrive; x/y controller streams are coalesced by a small flusher thread."""

    WATCH_S = 1.0  # how often the port list is read for an unplugged or replugged device

    def __init__(self, engine: EngineView, port_name: str, mapping: MidiMapping | None = None,
                 coalesce_s: float = 0.010) -> None:
        self.engine = engine
        self.port_name = port_name
        self.mapper = MidiMapper(mapping or MidiMapping())
        self.region = view_region(engine)  # what `xy U V` maps onto: the map's region
        self.coalesce_s = coalesce_s
        self.errors = 0
        self._lock = threading.Lock()
        self._pending_xy: Command | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._port: Any = None
        self._silent: set[int] = set()  # keys whose note the engine refused: no key-up sent
        self._flusher = threading.Thread(target=self._flush_loop, name="midi-xy", daemon=True)
        self.connected = True   # False from an unplugging until the port comes back
        self._watcher: threading.Thread | None = None

    def open(self) -> MidiInput:
        """Open the port (ConfigError when it cannot be) and watch for it to go and return."""
        self._port = self._open_port(self.port_name)
        self._watcher = threading.Thread(target=self._watch_loop, name="midi-watch",
                                         daemon=True)
        self._watcher.start()
        return self.start()

    def _open_port(self, name: str) -> Any:
        try:
            import mido
        except ImportError:
            raise ConfigError("MIDI needs mido and python-rtmidi (pip install mido "
                              "python-rtmidi)") from None
        try:
            with quiet_c_stderr():
                return mido.open_input(name, callback=self.on_message)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"cannot open MIDI input {name!r}: {first}; "
                              "`pgesam-live doctor` lists ports") from None

    def check_port(self, inputs: list[str],
                   reopen: Callable[[str], Any] | None = None) -> None:
        """One look at the input ports (the watcher's, every WATCH_S): the port gone lets go
        of its keys; a port of its name back (`reopen`, default: open it) plays again."""
        base = port_base(self.port_name)
        if self.connected:
            if self.port_name in inputs:
                return
            self.connected = False
            self._close_port()
            with self._lock:
                releases = self.mapper.let_go()
                self._pending_xy = None
            releases = [c for c in releases if c.args["pitch"] not in self._silent]
            self._silent.clear()
            for cmd in releases:
                self._submit(cmd)
            keys = f"; released {len(releases)} key(s) it held" if releases else ""
            self.engine.message(f"MIDI: {self.port_name} disconnected{keys}; it plays again "
                                "when plugged back in")
            return
        back = [n for n in inputs if port_base(n) == base]
        if not back:
            return
        try:
            self._port = (reopen or self._open_port)(back[0])
        except ConfigError as exc:
            self.errors += 1
            log.warning("MIDI: %s", exc)
            return
        self.port_name, self.connected = back[0], True
        self.engine.message(f"MIDI: {self.port_name} is back")

    def _watch_loop(self) -> None:
        import mido

        while not self._stop.wait(self.WATCH_S):
            try:  # (not list_ports: its moment of quieted fd 2 would swallow others' lines)
                inputs = list(mido.get_input_names())
            except Exception:  # the MIDI service gone for a moment: look again later
                continue
            try:
                self.check_port(inputs)
            except Exception:  # the watcher lives on: logged and counted
                self.errors += 1
                log.exception("MIDI: watching %r failed", self.port_name)

    def start(self) -> MidiInput:
        """Start the x/y flusher (open() does; tests call it to feed on_message directly)."""
        if not self._flusher.is_alive():
            self._flusher.start()
        return self

    def on_message(self, msg: Any) -> None:
        """mido callback (rtmidi's thread). Never raises."""
        try:
            if getattr(msg, "type", "") == "control_change" and \
                    msg.control in (self.mapper.mapping.cc_x, self.mapper.mapping.cc_y):
                self._follow_point()
            with self._lock:
                commands = self.mapper.handle(msg)
            for cmd in commands:
                if cmd.name == "xy":
                    with self._lock:
                        self._pending_xy = cmd
                    self._wake.set()
                    continue
                if cmd.name in ("note", "panic"):  # a knob turned just before: first
                    with self._lock:
                        move, self._pending_xy = self._pending_xy, None
                    if move is not None:
                        self._submit(move)
                if cmd.name == "release" and cmd.args["pitch"] in self._silent:
                    self._silent.discard(cmd.args["pitch"])
                    continue
                if not self._submit(cmd) and cmd.name == "note":
                    self._silent.add(cmd.args["pitch"])
        except Exception:  # rtmidi's thread must live on: logged and counted
            self.errors += 1
            log.exception("MIDI: message %r failed", msg)

    def _follow_point(self) -> None:
        """The pad starts from where the point is (moved from the REPL, OSC or a patch), so a
        controller moves its own axis only; a move of ours not sent yet is newer."""
        with self._lock:
            if self._pending_xy is not None:
                return
        point = self.engine.snapshot().get("point")
        if isinstance(point, list | tuple) and len(point) == 2:
            u, v = self.region.to_uv(float(point[0]), float(point[1]))
            with self._lock:
                self.mapper.u, self.mapper.v = u, v

    def _submit(self, cmd: Command) -> bool:
        """Submit; a refusal is said above the prompt (a player has no other screen)."""
        reply = self.engine.submit(cmd, src="midi")
        if reply.ok:
            return True
        self.errors += 1
        self.engine.message(f"MIDI: {reply.text or 'refused'}")
        return False

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                cmd, self._pending_xy = self._pending_xy, None
            if cmd is not None:
                try:
                    self._submit(cmd)
                except Exception:  # the flusher lives on: logged and counted
                    self.errors += 1
                    log.exception("MIDI: submitting %r failed", cmd)
                time.sleep(self.coalesce_s)   # later moves in this window: latest wins

    def _close_port(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except Exception as exc:  # closing at shutdown or unplugged: said, never raised
                log.warning("MIDI: closing %r failed: %s", self.port_name, exc)
            self._port = None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._close_port()
        for t in (self._flusher, self._watcher):
            if t is not None and t.is_alive():
                t.join(timeout=1.0)


def open_midi(engine: EngineView, spec: str, mapping: MidiMapping | None = None) -> MidiInput:
    """`--midi PORT|auto` -> an open MidiInput; ConfigError (one line) when it cannot be."""
    inputs, problem = list_ports()
    if problem is not None:
        raise ConfigError(f"{problem}; leave --midi out to play without MIDI")
    port = resolve_port(spec, inputs)
    return MidiInput(engine, port, mapping or MidiMapping.from_env()).open()


def start_midi(engine: EngineView, spec: str, message: Any = print,
               mapping: MidiMapping | None = None) -> MidiInput | None:
    """open_midi for the live app: on success says which port, on failure says why in one
    line (through `message`) and returns None, so the instrument plays on without MIDI."""
    try:
        inp = open_midi(engine, spec, mapping)
    except ConfigError as exc:
        message(f"--midi {spec}: {exc}; playing on without MIDI")
        return None
    m = inp.mapper.mapping
    message(f"MIDI in: {inp.port_name} (CC{m.cc_x} -> x, CC{m.cc_y} -> y, CC64 sustain)")
    return inp
