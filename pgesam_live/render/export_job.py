"""An export (render/sfz.py) run while the instrument plays: in its own spawned process, so
the model loaded there and torch never take the GIL from the clock; progress and the result
come back over a queue and are told to the caller's callbacks from a thread here."""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: added to an export process's niceness: on this project's 2-core machines the live worker
#: keeps its share of the CPU while an export renders
EXPORT_NICENESS = 10

OnProgress = Callable[[int, int], object]
OnDone = Callable[[Path | None, str | None], object]  # (the SFZ, or None and why)


def _export_main(model: str, device: str, make_synth: Callable[[], Any] | None, x: float,
                 y: float, out_dir: str, pitches: list[int] | None, name: str | None, seed: int,
                 n_threads: int, q: Any) -> None:
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the instrument stops us (see worker.py)
    try:  # the live synthesis worker and the audio come first on a shared CPU
        os.nice(EXPORT_NICENESS)
    except OSError:
        pass
    os.environ["PGESAM_TORCH_THREADS"] = str(max(1, n_threads))
    try:
        from pgesam_live.render.sfz import export_point  # noqa: PLC0415

        if make_synth is not None:
            synth = make_synth()
        else:
            from pgesam_live.model.synth import Synth  # noqa: PLC0415

            synth = Synth.load(model, device=device)
        result = export_point(synth, x, y, out_dir, pitches=pitches, name=name, seed=seed,
                              progress=lambda d, t: q.put(("progress", d, t)))
        q.put(("done", str(result.sfz), len(result.samples)))
    except Exception as e:  # said to the performer, never a traceback on the terminal
        from pgesam_live.errors import PgesamError  # noqa: PLC0415

        q.put(("error", str(e) if isinstance(e, PgesamError) else f"{type(e).__name__}: {e}"))


class ExportJob:
    """One export in a spawned process. make_synth: a picklable top-level function that
    builds the synth there (tests); None loads `model` on `device`."""

    def __init__(self, x: float, y: float, out_dir: str | Path, *, model: str = "default",
                 device: str = "cpu", pitches: Sequence[int] | None = None,
                 name: str | None = None, seed: int = 0, n_threads: int = 1,
                 make_synth: Callable[[], Any] | None = None,
                 on_progress: OnProgress | None = None, on_done: OnDone | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._q: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=_export_main, name="pgesam-export", daemon=True,
            args=(model, device, make_synth, float(x), float(y), str(out_dir),
                  None if pitches is None else [int(p) for p in pitches], name, int(seed),
                  n_threads, self._q))
        self.on_progress, self.on_done = on_progress, on_done
        self.done = threading.Event()
        self.sfz: Path | None = None
        self.error: str | None = None
        self.progress: tuple[int, int] = (0, 0)
        self._thread = threading.Thread(target=self._listen, daemon=True, name="export-listen")

    def start(self) -> ExportJob:
        self._proc.start()
        self._thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.done.wait(timeout_s)

    def cancel(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()

    def _finish(self, sfz: Path | None, error: str | None) -> None:
        self.sfz, self.error = sfz, error
        if self.on_done is not None:
            self.on_done(sfz, error)
        self.done.set()

    def _listen(self) -> None:
        while True:
            try:
                msg = self._q.get(timeout=0.2)
            except queue.Empty:
                if not self._proc.is_alive() and self._q.empty():
                    code = self._proc.exitcode
                    self._finish(None, f"the export process ended (exit code {code})")
                    return
                continue
            if msg[0] == "progress":
                self.progress = (int(msg[1]), int(msg[2]))
                if self.on_progress is not None:
                    self.on_progress(*self.progress)
            elif msg[0] == "done":
                self._finish(Path(msg[1]), None)
                return
            else:
                self._finish(None, str(msg[1]))
                return


__all__ = ["ExportJob"]
