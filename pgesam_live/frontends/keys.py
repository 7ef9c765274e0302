"""`keys`: the terminal's keyboard as an instrument (a mode of the REPL's prompt).

The row a w s e d f t g y h u j k plays the semitones 0..12 above the base octave (C4 = 60
first), as pGESAM's demo page and the web page (frontends/web_static/app.js) lay it out;
z / x move the octave down / up; the arrow keys move the point by a step of the map's region
(shift: five steps); Escape or Enter leaves. A terminal sends no key-up, so each note plays
for the length `keys` was given (default 1 beat): `play P vel V len L`. Every note and move
is an ordinary command through the door (src `repl`), journalled like a typed line.

`KeysMode` is the pure key -> line mapping (tests drive it directly); `run_keys` runs it as a
prompt_toolkit Application on the REPL's input, its bottom line saying the mode is on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgesam_live.notes import midi_to_note
from pgesam_live.vocab.commands import Command
from pgesam_live.vocab.mapview import MapRegion
from pgesam_live.vocab.views import EngineView, Reply, status_line, view_region

KEY_ROW = "awsedftgyhujk"   # semitones 0..12 above the base octave
BASE_PITCH = 60             # C4: `a` at the start
OCTAVE_SHIFT_MAX = 3        # z / x go at most three octaves down or up
STEP_FRACTION = 0.02        # an arrow moves the point 2 % of the map's width
BIG_STEPS = 5               # shift + arrow: five steps

_ARROWS = {"left": (-1, 0), "right": (1, 0), "up": (0, 1), "down": (0, -1)}


@dataclass
class KeysMode:
    """Key names (prompt_toolkit's: "a", "left", "s-left", "escape", "enter") -> what to
    do. `press` returns the command line to submit (None: nothing to submit)."""

    region: MapRegion
    len_beats: float = 1.0
    vel: float = 0.8
    point: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)
    octave: int = 0
    said: str = ""           # the mode's last word: a note played, an octave, a refusal
    lines: list[str] = field(default_factory=list)   # what was submitted (for the summary)

    def pitch_of(self, key: str) -> int:
        return BASE_PITCH + 12 * self.octave + KEY_ROW.index(key)

    def range_text(self) -> str:
        low = BASE_PITCH + 12 * self.octave
        return f"{midi_to_note(low)}..{midi_to_note(low + 12)}"

    def press(self, key: str) -> str | None:
        if len(key) == 1 and key in KEY_ROW:
            pitch = self.pitch_of(key)
            return Command("play", {"pitches": [pitch], "vel": self.vel,
                                    "len_beats": self.len_beats}).to_line()
        if key in ("z", "x"):
            self.octave = max(-OCTAVE_SHIFT_MAX, min(OCTAVE_SHIFT_MAX,
                                                     self.octave + (1 if key == "x" else -1)))
            self.said = f"octave {self.range_text()}"
            return None
        arrow = key[2:] if key.startswith("s-") else key
        if arrow in _ARROWS:
            dx, dy = _ARROWS[arrow]
            steps = BIG_STEPS if key.startswith("s-") else 1
            step = STEP_FRACTION * self.region.width * steps
            x, y = self.point()
            x, y = self.region.clamp(x + dx * step, y + dy * step)
            return Command("at", {"x": round(x, 3), "y": round(y, 3)}).to_line()
        return None

    def bar(self) -> str:
        """What the bottom line says before the status: the mode, its keys and range."""
        return (f"KEYS {self.range_text()} (a w s e d f t g y h u j k; z/x octave; arrows "
                f"move, shift further; Esc/Enter leaves)")


def run_keys(view: EngineView, cmd: Command, *, pt_input: Any = None, pt_output: Any = None,
             width: Callable[[], int] = lambda: 120) -> list[str]:
    """The mode until Escape or Enter; returns the lines to print after it."""
    from prompt_toolkit.application import Application  # noqa: PLC0415
    from prompt_toolkit.key_binding import KeyBindings  # noqa: PLC0415
    from prompt_toolkit.layout import HSplit, Layout, Window  # noqa: PLC0415
    from prompt_toolkit.layout.controls import FormattedTextControl  # noqa: PLC0415

    def point() -> tuple[float, float]:
        p = view.snapshot().get("point") or [0.0, 0.0]
        return float(p[0]), float(p[1])

    mode = KeysMode(view_region(view), len_beats=float(cmd.args.get("len_beats") or 1.0),
                    vel=float(cmd.args.get("vel", 0.8)), point=point)
    refused: list[str] = []

    def act(key: str) -> None:
        line = mode.press(key)
        if line is None:
            return
        try:
            reply: Reply = view.submit(line, src="repl")
        except Exception as exc:  # the engine's bug: said, the mode stays
            reply = Reply(False, f"internal error: {type(exc).__name__}: {exc}")
        if reply.ok:
            mode.lines.append(line)
            mode.said = line
        else:
            mode.said = f"error: {reply.text}"
            refused.append(f"error: {line}: {reply.text}")

    kb = KeyBindings()
    for key in [*KEY_ROW, "z", "x", *_ARROWS, *(f"s-{a}" for a in _ARROWS)]:
        kb.add(key)(lambda event, key=key: act(key))

    @kb.add("c-\\", eager=True)
    def _panic(event: Any) -> None:  # Ctrl-\: panic, as at the prompt; the mode stays
        try:
            reply: Reply = view.submit("panic", src="repl")
        except Exception as exc:  # the engine's bug: said, the mode stays
            reply = Reply(False, f"internal error: {type(exc).__name__}: {exc}")
        if reply.ok:
            mode.lines.append("panic")
        mode.said = "panic (Ctrl-\\): everything silenced" if reply.ok else \
            f"error: {reply.text}"

    @kb.add("escape", eager=True)
    @kb.add("enter")
    @kb.add("c-c")
    @kb.add("c-d")
    def _leave(event: Any) -> None:
        event.app.exit()

    @kb.add("<any>")
    def _other(event: Any) -> None:
        mode.said = "not a key of the keyboard (a w s e d f t g y h u j k, z x, arrows; " \
                    "Esc leaves)"

    def bottom() -> str:
        try:
            status = status_line(view.snapshot(), width=max(20, width() - len(mode.bar()) - 3))
        except Exception as exc:
            status = f"status unavailable: {type(exc).__name__}"
        return f"{mode.bar()} | {status}"

    layout = Layout(HSplit([
        Window(FormattedTextControl(lambda: mode.said or "keys: play"), height=1),
        Window(FormattedTextControl(bottom), height=1, style="class:bottom-toolbar"),
    ]))
    app: Application[None] = Application(layout=layout, key_bindings=kb, full_screen=False,
                                         refresh_interval=0.5, input=pt_input,
                                         output=pt_output, erase_when_done=True)
    app.ttimeoutlen = 0.05  # a lone Escape leaves at once (not after half a second)
    app.run()
    n = len(mode.lines)
    return [*refused, f"keys: {n} command{'s' if n != 1 else ''} played"]
