"""The names a patch's command lines use (points, sequences), checked against what will exist
when each line runs."""

from __future__ import annotations

from collections.abc import Collection

from pgesam_live.notes import (
    NoteError,
    parse_notes,
)
from pgesam_live.patches.model import (
    Patch,
)
from pgesam_live.vocab.commands import (
    Command,
)


def command_name_errors(commands: list[tuple[Command, float | None]],
                        points: Collection[str], sequences: Collection[str],
                        known_points: Collection[str],
                        known_sequences: Collection[str],
                        trajectories: Collection[str] = ()) -> list[tuple[int, str]]:
    """(index, message) for each of a patch's commands (in the order they run) that names
    what will not exist when it runs: `at NAME` a point of the patch, a `mark` before it or
    one of `known_points`; `mark NAME` not one of the patch's points; `start NAME` a sequence
    of the patch; `stop NAME` one running then (the patch's, one of `known_sequences`, one a
    `seq` or `start` before it started; a stop or hush before it ends them); a rests-only
    `seq NAME` one running then (it silences that one); `seq ... at NAME` a point as for `at`,
    or one of the patch's `trajectories`. Lines after a `load` are not judged
    (their names may be the other patch's)."""
    marks = set(points) | set(known_points)
    running = set(sequences) | set(known_sequences)
    out: list[tuple[int, str]] = []
    for k, (cmd, _) in enumerate(commands):
        name = str(cmd.args.get("name", ""))
        if cmd.name == "load":
            break  # the names after it may be the other patch's: checked when they run
        if cmd.name == "mark":
            if name in points:
                out.append((k, f"mark: {name!r} is a point of this patch; choose another "
                               "name"))
            marks.add(name)
        elif cmd.name == "seq":
            at = cmd.args.get("at")
            if at is not None and at not in marks and at not in trajectories:
                have = ", ".join(sorted({*marks, *trajectories})) or \
                    "none (define it under points: or trajectories:)"
                out.append((k, f"seq {name}: no point or trajectory named {at!r} before this "
                               f"line runs; known: {have}"))
            if not any(_rest_free(cmd.args.get("notes", ""))):
                if name not in running:
                    out.append((k, f"seq {name}: rests only, and no sequence {name!r} runs "
                                   "then: nothing would sound (give at least one note)"))
                running.discard(name)
            else:
                running.add(name)
        elif cmd.name == "at" and "name" in cmd.args and name not in marks:
            have = ", ".join(sorted(marks)) or "none (define it under points:)"
            out.append((k, f"at: no point named {name!r} before this line runs; known: {have}"))
        elif cmd.name == "start":
            if name not in sequences:
                have = ", ".join(sorted(sequences)) or "it defines none (under sequences:)"
                out.append((k, f"start: no sequence {name!r} in this patch; {have}"))
            else:
                running.add(name)
        elif cmd.name == "stop":
            if name not in running:
                have = ", ".join(sorted(running)) or "none"
                out.append((k, f"stop: no sequence {name!r} runs when this line does; "
                               f"running then: {have}"))
            running.discard(name)
        elif cmd.name in ("hush", "panic"):
            running.clear()
    return out


def _rest_free(notes: str) -> list[tuple[int, ...]]:
    """The sounding steps of a note string (an unreadable one counts as sounding: its
    error is reported where it is read)."""
    try:
        return [step for step in parse_notes(notes) if step]
    except (NoteError, ValueError):
        return [(0,)]


def patch_name_errors(patch: Patch, known_points: Collection[str],
                      known_sequences: Collection[str]) -> list[str]:
    """command_name_errors of a read patch (for a load whose names are known only when it
    runs: a replayed or bundled one), each as `FILE: commands: "LINE": message`."""

    cmds = [(c.parsed(), c.at_beats) for c in patch.commands]
    return [f"{patch.path}: commands: \"{patch.commands[k].line}\": {message}"
            for k, message in command_name_errors(cmds, patch.points, patch.sequences,
                                                  known_points, known_sequences,
                                                  patch.trajectories)]
