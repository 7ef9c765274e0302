"""What each command does, applied in the audio hook: one handler per journalled word of the
command table, registered with `@handles(name)` (a word without one fails at import). A
handler gets the engine, the command's arguments and what `Engine._prepare` computed for it
(a loaded patch, a sequence)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgesam_live.errors import CommandError
from pgesam_live.patches.model import Patch
from pgesam_live.patches.names import patch_name_errors
from pgesam_live.vocab.commands import COMMANDS, Command

if TYPE_CHECKING:
    from pgesam_live.engine.door import Engine

Handler = Callable[["Engine", dict[str, Any], Any], None]
#: command name -> its handler (applied in the audio hook), registered with @handles below;
#: every journalled word of the command table has exactly one (checked at import).
HANDLERS: dict[str, Handler] = {}


def handles(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of command `name`."""
    spec = COMMANDS.get(name)
    if spec is None or not spec.journal:
        raise ValueError(f"no journalled command {name!r} in the command table")

    def register(fn: Handler) -> Handler:
        if name in HANDLERS:
            raise ValueError(f"command {name!r} has two handlers")
        HANDLERS[name] = fn
        return fn
    return register


@handles("at")
def do_at(e: Engine, a: dict[str, Any], _: Any) -> None:
    if "name" in a:
        inst = e.instrument_of(a["name"])
        x, y = (inst.x, inst.y) if inst is not None else e.resolve_point(a["name"])
        e.name_point(a["name"], (x, y))
        if inst is not None:  # said: which of the programs the word matched, and where
            also = f"; also {', '.join(inst.others)}: name more words" if inst.others else ""
            e.message(f"at {a['name']}: {inst.label} ({x:+.2f}, {y:+.2f}){also}")
    else:
        x, y = a["x"], a["y"]
        e.name_point(None)
    e._set_point(x, y)


@handles("xy")
def do_xy(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.name_point(None)
    e._set_point(*e.map_region.to_xy(a["u"], a["v"]))  # the map's region (vocab/mapview.py)


@handles("play")
def do_play(e: Engine, a: dict[str, Any], _: Any) -> None:
    e._remember(a["pitches"])
    e.scheduler.play_now(list(a["pitches"]), a["vel"], a.get("len_beats"))


@handles("note")
def do_note(e: Engine, a: dict[str, Any], _: Any) -> None:
    # mode: "hold" (`note P V hold`: until `release P`) or "follow" (held, the timbre
    # following the point); absent: a one-shot, or a note of len_s.
    e._remember([a["pitch"]])
    e.scheduler.play_now([a["pitch"]], a["vel"], e._beats(a.get("len_s")), mode=a.get("mode"))


@handles("note_at")
def do_note_at(e: Engine, a: dict[str, Any], _: Any) -> None:
    e._remember([a["pitch"]])
    e.scheduler.play_now([a["pitch"]], a["vel"], e._beats(a.get("len_s")),
                         point=(a["x"], a["y"]), mode=a.get("mode"))


@handles("release")
def do_release(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.scheduler.release(a["pitch"])


@handles("seq")
def do_seq(e: Engine, a: dict[str, Any], seq: Any) -> None:
    if not any(seq.pattern) and a["name"] not in e.scheduler.running_sequences():
        raise CommandError(f"seq {a['name']}: rests only, and no sequence {a['name']!r} is "
                           "running: nothing would sound (give at least one note)")
    if seq.timbre is None and seq.timbre_name is not None:  # `at NAME` made by earlier lines
        timbre, _ = e._seq_timbre(seq.timbre_name)
        seq = dataclasses.replace(seq, timbre=timbre)
    e.scheduler.start_sequence(a["name"], seq)


@handles("start")
def do_start(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.scheduler.start_sequence(a["name"], e._resolve(Command("start", a)))


@handles("stop")
def do_stop(e: Engine, a: dict[str, Any], _: Any) -> None:
    e._resolve(Command("stop", a))
    e.scheduler.stop_sequence(a["name"])


@handles("glide")
def do_glide(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.name_point(None)
    e.scheduler.glide(a["x"], a["y"], a["beats"])


@handles("tempo")
def do_tempo(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.scheduler.set_tempo(a["bpm"])


@handles("load")
def do_load(e: Engine, a: dict[str, Any], patch: Patch) -> None:
    # Its commands' names against the state now (a timed load, e.g. replayed, could not
    # be checked when it was submitted; an immediate one was, against the same state).
    problems = patch_name_errors(patch, {*e.bookmarks, *e.model.named_points},
                                 e.scheduler.live_sequences())
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CommandError(problems[0] + more)
    if patch.model not in (None, "default", e.model.model_id):
        e.message(f"patch {patch.path} asks for model {patch.model!r}; "
                     f"playing it with {e.model.model_id}")
    beat = e.scheduler.load_patch(patch)
    when = "now" if beat == 0.0 else f"at beat {beat:g} (the next bar)"
    e.message(f"loaded {patch.summary()}; plays {when}")


@handles("mark")
def do_mark(e: Engine, a: dict[str, Any], _: Any) -> None:
    name = a["name"]
    e._mark_clash(name, e._patch_points())
    if name in e.model.named_points and name not in e.bookmarks:
        x, y = e.model.named_points[name]
        e.message(f"mark {name}: your bookmark now stands for {name} (the demo "
                     f"patches' {name} at ({x:+.2f}, {y:+.2f}) is hidden this session)")
    # Where the point is at this command's own time (a patch line fires ahead, at its
    # beat: `at p1` then `mark home` marks p1).
    e.bookmarks[name] = e.scheduler.point_at(e.scheduler.now_or_action_s())
    e.name_point(name, e.bookmarks[name])


@handles("hush")
def do_hush(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.scheduler.hush()
    e.voices.release_all()


@handles("panic")
def do_panic(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.scheduler.hush()
    e.scheduler.forget_followers()
    e.voices.panic()


@handles("gain")
def do_gain(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.gain = float(a["level"])
    set_gain = getattr(e.voices, "set_gain", None)  # the pool's mix level (a stand-in has none)
    if set_gain is not None:
        set_gain(e.gain)


@handles("prerender")
def do_prerender(e: Engine, a: dict[str, Any], _: Any) -> None:
    e._prerender_bank(a["x"], a["y"], a.get("low"), a.get("high"), e._time_s,
                         announce_cached=True)


@handles("lookahead")
def do_lookahead(e: Engine, a: dict[str, Any], _: Any) -> None:
    e.scheduler.set_lookahead(a["seconds"])


@handles("follow")
def do_follow(e: Engine, a: dict[str, Any], _: Any) -> None:
    """`follow on|off`: every held note's timbre follows the point (on: those sounding now
    too), or only those played `note P V follow` (off, the default)."""
    state = a.get("state")
    if state not in ("on", "off"):
        raise CommandError(f"follow {state!r}: use follow on or follow off")
    e.scheduler.set_follow(state == "on")


_unhandled = sorted(n for n, spec in COMMANDS.items() if spec.journal and n not in HANDLERS)
if _unhandled:
    raise ImportError(f"commands without an engine handler: {', '.join(_unhandled)}")
