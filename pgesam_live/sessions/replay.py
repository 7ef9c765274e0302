"""The one replay loop: a journal's schedule submitted to an engine at its times (live, from a
start time on the engine's clock; offline, from 0), each refusal said once: when it is
submitted, or when it comes due (a timed command refused then)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgesam_live.sessions.journal import Schedule


def submit_schedule(engine: Any, schedule: Schedule, t0_s: float,
                    say: Callable[[str], None]) -> None:
    """Submit every (t_s, src, Command) at engine time `t0_s + t_s`; `say` hears each
    command skipped, with its time in the journal."""
    def on_rejected(ev: dict[str, Any]) -> None:
        if ev.get("kind") == "rejected":
            say(f"skipped `{ev['cmd']}` at {ev['t'] - t0_s:.3f} s: {ev['text']}")

    engine.add_listener(on_rejected)
    for t_s, src, cmd in schedule:
        r = engine.submit(cmd, src=src, at_s=t0_s + t_s)
        if not r.ok:
            say(f"skipped `{cmd.to_line()}` at {t_s:.3f} s: {r.text}")
