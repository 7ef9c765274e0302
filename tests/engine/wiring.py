"""The command-table entries issue 16's wiring adds (vocab/commands.py is another change's):
`note P V hold|follow`, `note_at X Y P V hold|follow` and `follow on|off`, exactly as proposed
for the table, patched in for the engine's tests. `with_hold_words()` is a context manager."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pgesam_live.engine import handlers
from pgesam_live.errors import CommandError
from pgesam_live.vocab import commands as table

HOLD_MODES = ("hold", "follow")


def _check_mode(args: dict[str, Any]) -> None:
    mode = args.get("mode")
    if mode is not None and mode not in HOLD_MODES:
        raise CommandError(f"note: {mode!r} is not a mode; use `hold` (until `release P`) or "
                           "`follow` (held, the timbre following the point)")


def _check_state(args: dict[str, Any]) -> None:
    if args["state"] not in ("on", "off"):
        raise CommandError(f"follow: {args['state']!r}: use `follow on` or `follow off`")


def proposed_specs() -> dict[str, table.Spec]:
    """The three entries as the table will have them."""
    pitch = table.Arg("pitch", "pitch")
    vel = table.Arg("vel", "velocity", "velocity 0..1")
    mode = table.Arg("mode", "name", "hold (until `release P`) or follow (held, following "
                                     "the point)")
    note = table.COMMANDS["note"]
    note_at = table.COMMANDS["note_at"]
    return {
        "note": dataclasses.replace(
            note, forms=(*note.forms, table.Form((pitch, vel, mode))),
            help=note.help + "; `note C4 0.8 hold` holds it until `release C4`",
            check=_check_mode),
        "note_at": dataclasses.replace(
            note_at, forms=(*note_at.forms, table.Form((table._X, table._Y, pitch, vel, mode))),
            check=_check_mode),
        "follow": table.Spec("follow", (table.Form((table.Arg("state", "name", "on or off"),),
                                                   "/pgesam/follow"),),
                             "held notes follow the timbre point while they sound: "
                             "`follow on` (or per note: `note C4 0.8 follow`)",
                             check=_check_state),
    }


@contextmanager
def with_hold_words() -> Iterator[None]:
    """The table with issue 16's words, and their handlers registered, for a test."""
    saved = dict(table.COMMANDS)
    saved_osc = dict(table.OSC_ADDRESSES)
    saved_handlers = dict(handlers.HANDLERS)
    try:
        specs = proposed_specs()
        table.COMMANDS.update(specs)
        table.OSC_ADDRESSES["/pgesam/follow"] = ("follow", 0)
        handlers.HANDLERS.setdefault("follow", handlers.do_follow)
        yield
    finally:
        table.COMMANDS.clear()
        table.COMMANDS.update(saved)
        table.OSC_ADDRESSES.clear()
        table.OSC_ADDRESSES.update(saved_osc)
        handlers.HANDLERS.clear()
        handlers.HANDLERS.update(saved_handlers)
