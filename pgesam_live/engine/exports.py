"""`export` from the instrument: the current point (or a named one, or x y) as a multisample
(render/sfz.py), rendered in its own process (render/export_job.py) while the music plays.
Progress and the result are engine messages (the REPL prints them; OSC and the web page get
them as events); a front end's word calls `Engine.start_export`. A part of the Engine (a
mixin). Not journalled: it changes nothing in the performance. One export renders at a time,
in a process niced below the live worker's (render/export_job.py): a second is refused, saying
which one is rendering.

Where it writes: the command line and the REPL anywhere (`--out DIR`; default
`<sessions>/export-<name>`); OSC and the web page (confined sources, vocab/sources.py) only
into the sessions folder, by name."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pgesam_live.errors import ConfigError, PgesamError
from pgesam_live.render.export_job import ExportJob
from pgesam_live.render.sfz import check_export_name, coords_label
from pgesam_live.vocab.sources import source
from pgesam_live.vocab.views import Reply


class Exports:
    """Engine methods for `export` (see the module docstring)."""

    model: Any
    scheduler: Any
    current_point_name: Callable[[], str | None]  # (names.py)
    #: what an export loads in its process: the engine's model name and device (the builder
    #: sets them from the settings), the folder exports go to by default.
    export_model: str = "default"
    export_device: str = "cpu"
    export_dir: Path = Path("sessions")
    #: tests: a picklable function building the synth in the export's process
    export_synth_factory: Callable[[], Any] | None = None
    #: every export this engine started (the Engine's __init__ makes the list)
    exports_started: list[_Export]

    # The Engine's own (engine/door.py, engine/names.py).
    resolve_point: Callable[[str], tuple[float, float]]
    settle: Callable[[], None]
    emit: Callable[[dict[str, Any]], None]
    message: Callable[[str], None]

    def start_export(self, point: str | tuple[float, float] | None = None,
                     out_dir: str | Path | None = None, pitches: Sequence[int] | None = None,
                     src: str = "repl", name: str | None = None) -> Reply:
        """Start exporting `point` (a name, (x, y), or None: the current point) to `out_dir`
        (None: `<export_dir>/export-<name>`); the reply says where, or what is wrong. Never
        raises for bad input."""
        # The point is read as the lines before this one left it (`at flute` then `export`
        # piped in one go: the `at` is applied by the next audio block).
        self.settle()
        for x in self.exports_running():  # one at a time: each takes a core from the worker
            done, total = x.job.progress
            return Reply(False, f"export: {x.name} is still rendering ({done} of "
                                f"{total or len(x.pitches)} notes into {x.out_dir}); export "
                                "again when it is done")
        try:
            job = self._export_job(point, out_dir, pitches, src, name)
        except PgesamError as e:
            return Reply(False, str(e))
        job.start()
        self.exports_started.append(job)
        return Reply(True, f"export: rendering {len(job.pitches)} notes into {job.out_dir}")

    def exports_running(self) -> list[_Export]:
        """The exports started from this engine that have not finished."""
        return [x for x in self.exports_started if not x.job.done.is_set()]

    def finish_exports(self, say: Callable[[str], None], wait: bool = True) -> None:
        """At the end of a session: wait for the exports still rendering (`wait`; Ctrl-C
        stops waiting), then cancel what is left, saying for each what its folder holds, so
        quitting never drops an export without a word."""
        running = self.exports_running()
        try:
            for x in running if wait else []:
                done, total = x.job.progress
                say(f"export {x.name}: {done} of {total or len(x.pitches)} notes rendered; "
                    "finishing it before quitting (Ctrl-C cancels it)")
                x.job.wait()
                if x.outcome is not None:  # the REPL that would print its message has ended
                    say(x.outcome)
        except KeyboardInterrupt:
            pass
        for x in self.exports_running():
            x.cancelled = True
            x.job.cancel()
            x.job.wait(5.0)
            done = x.job.progress[0]
            say(f"export {x.name} cancelled at {done} of {len(x.pitches)} notes: {x.out_dir} "
                "holds no SFZ; run the export again")

    def _export_job(self, point: str | tuple[float, float] | None,
                    out_dir: str | Path | None, pitches: Sequence[int] | None, src: str,
                    name: str | None) -> _Export:
        if isinstance(point, str):
            x, y = self.resolve_point(point)
            label = point
        elif point is None:
            x, y = self.scheduler.current_point()
            label = self.current_point_name() or coords_label(x, y)
        else:
            x, y = float(point[0]), float(point[1])
            label = coords_label(x, y)
        name = check_export_name(name or re.sub(r"[^A-Za-z0-9_.\-]", "", label) or "point")
        lo, hi = self.model.pitch_range
        want = list(range(lo, hi + 1)) if pitches is None else [int(p) for p in pitches]
        bad = [p for p in want if not lo <= p <= hi]
        if bad or not want:
            raise ConfigError(f"export: pitch {bad[0] if bad else '(none)'} is outside the "
                              f"model's range {lo}..{hi}; keys beyond it play the nearest "
                              "sample")
        base = Path(self.export_dir).resolve()
        target = (base / f"export-{name}") if out_dir is None else Path(out_dir).expanduser()
        if source(src).confined_loads:
            resolved = (base / target).resolve() if not target.is_absolute() else \
                target.resolve()
            if resolved != base and base not in resolved.parents:
                raise ConfigError(f"export from {src}: only into the sessions folder "
                                  f"({base}); give a name (`export NAME`), not a path")
            target = resolved
        if target.exists() and not target.is_dir():
            raise ConfigError(f"export: {target} is a file; give a folder")
        return _Export(self, x, y, target, want, name)


class _Export:
    """One started export: its job, and its progress told as engine messages and events."""

    def __init__(self, e: Exports, x: float, y: float, out_dir: Path, pitches: list[int],
                 name: str) -> None:
        self.e, self.out_dir, self.pitches, self.name = e, out_dir, pitches, name
        self._last = -1
        self.cancelled = False  # by the session's end: finish_exports says so, once
        self.outcome: str | None = None  # what it said when it ended (the SFZ, or why not)
        self._lock = threading.Lock()
        self.job = ExportJob(x, y, out_dir, model=e.export_model, device=e.export_device,
                             pitches=pitches, name=name, seed=int(e.scheduler.seed),
                             make_synth=e.export_synth_factory, on_progress=self._progress,
                             on_done=self._done)

    def start(self) -> ExportJob:
        return self.job.start()

    def _progress(self, done: int, total: int) -> None:
        self.e.emit({"kind": "export", "name": self.name, "done": done, "total": total,
                     "sfz": None, "error": None})

    def _done(self, sfz: Path | None, error: str | None) -> None:
        if self.cancelled:
            return
        total = len(self.pitches)
        self.e.emit({"kind": "export", "name": self.name, "done": total if sfz else 0,
                     "total": total, "sfz": str(sfz) if sfz else None, "error": error})
        self.outcome = (f"export {self.name}: {sfz}" if sfz else
                        f"export {self.name} failed: {error}")
        self.e.message(self.outcome)


__all__ = ["Exports"]
