"""The live instrument: `play` (and a live `replay`): audio, the synthesis worker, REPL,
OSC, MIDI, the web page and the session journal around one engine. The front ends see the
engine through one view (frontends/seam.py's FrontView), which adds the page's address to
what `status` shows."""

from __future__ import annotations

import contextlib
import sys
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgesam_live.app.build import LIVE_PREROLL_S, RING_OUT_MAX_S, TAIL_S, build_live, model_info
from pgesam_live.app.common import quote, settings_from_args
from pgesam_live.app.inputs import load_checked
from pgesam_live.errors import PgesamError
from pgesam_live.patches.files import find_patch
from pgesam_live.settings import Settings


def _drop_unused(journal: Any) -> None:
    """A start that failed before anything played: its journal (a header) goes."""
    journal.close()
    with contextlib.suppress(OSError):
        journal.path.unlink()


RECORD_SETTLE_S = 0.3  # after the last voice: the recorder's blocks reach the file
RELEASE_AT_QUIT_S = 2.0  # keys held at quit: their releases ring this long at most


def _ring_out(engine: Any, voices: Any, max_s: float = RING_OUT_MAX_S,
              clock: Callable[[], float] | None = None,
              sleep: Callable[[float], None] | None = None) -> None:
    """Let what plays and what is queued finish and ring out (at most max_s), then the
    recorder's last blocks reach its file; what still sounds after max_s fades (`panic`)."""
    import time  # noqa: PLC0415

    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    end = clock() + max_s
    sleep(0.3)  # the last commands reach the audio hook
    while clock() < end and (voices.in_use() or engine.renderer.pending):
        sleep(0.05)
    if voices.in_use():
        engine.submit("panic", src="patch")  # a fade, never a cut
        sleep(0.1)
    sleep(RECORD_SETTLE_S)


def _finish_piped(engine: Any, voices: Any, clock: Callable[[], float] | None = None,
                  sleep: Callable[[float], None] | None = None) -> None:
    """Piped input ended: as an offline replay ends, what the lines started plays on
    (sequences still running are stopped TAIL_S after the last line, `hush`: their notes
    ring), then everything rings out before the recording closes."""
    import time  # noqa: PLC0415

    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    tail_end = clock() + TAIL_S
    sleep(0.3)
    while engine.busy() and clock() < tail_end:
        sleep(0.05)
    _let_go(engine)
    _ring_out(engine, voices, clock=clock, sleep=sleep)


def _let_go_held(engine: Any) -> list[int]:
    """Keys still held are released, each into its own release and journalled `release P`
    (so a replay holds them exactly as long). Returns the pitches released."""
    held = list(engine.snapshot().get("held_now", []))
    for pitch in held:
        engine.submit(f"release {pitch}", src="patch")
    return held


def _let_go(engine: Any) -> None:
    """The end of what plays: held keys released (_let_go_held), sequences hushed (if any
    still run: asked before the releases queue, which busy() would count)."""
    busy = engine.busy()
    _let_go_held(engine)
    if busy:
        engine.submit("hush", src="patch")


def _release_at_quit(engine: Any, voices: Any, started: bool, interrupted: bool) -> None:
    """Release the keys held at the end of a live run (journalled); their releases ring out
    (after Ctrl-C or a signal: journalled, not waited for). Never raises."""
    if not started:
        return
    try:
        if _let_go_held(engine):
            if interrupted:
                engine.settle()
            else:
                _ring_out(engine, voices, max_s=RELEASE_AT_QUIT_S)
    except Exception as exc:  # never lose the session's end over it
        print(f"held notes at quit: {exc}", flush=True)


def run_play(ns: Namespace) -> int:
    """`pgesam-live [play [PATCH]]`: the live instrument."""
    s = settings_from_args(ns)
    if ns.patch:  # a bad patch ends the start here, before any audio or journal
        patch, s = load_checked(ns.patch, s, ns.model)
        return run_live(s, patch=patch.path, repl=not ns.no_repl)
    return run_live(s, repl=not ns.no_repl)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end a live run through its normal shutdown (journal closed, the
    recording a complete WAV), also when the shell started it with SIGINT ignored (a
    background job of a script)."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


def run_live(s: Settings, patch: str | None = None, replay: list | None = None,
              repl: bool = True) -> int:
    import asyncio  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from pgesam_live.audio.server import repair_recordings  # noqa: PLC0415
    from pgesam_live.frontends.osc_server import osc_port_problem  # noqa: PLC0415
    from pgesam_live.model.synth import resolve_device  # noqa: PLC0415
    from pgesam_live.sessions.journal import Journal, make_header, session_path  # noqa: PLC0415

    path, info = model_info(s.model, s.patch_dir)
    resolve_device(s.device)  # --device cuda without a GPU: said before anything starts
    problem = osc_port_problem(s.osc_host, s.osc_port)
    if problem:  # before anything is written: a busy port leaves no journal or recording
        raise PgesamError(problem)
    s.session_dir.mkdir(parents=True, exist_ok=True)
    for line in repair_recordings(s.session_dir):  # sessions cut off by a crash
        print(line, flush=True)
    # The journal first: it takes the session's name, which the recording shares.
    # Written on its own thread: the engine's events come from the audio hook.
    journal = Journal(session_path(s.session_dir),
                      make_header(info.model_id, s.seed, s.tempo_bpm,
                                  lookahead_s=s.lookahead_s, sample_rate=s.sample_rate,
                                  cache_grid=s.cache_grid), background=True,
                      find_patch=lambda name: find_patch(name, s.patch_dir))
    try:
        rig = build_live(s, info, path, record_path=journal.path.with_suffix(".wav")
                         if s.audio in ("auto", "record") else None)
        audio, voices, cache, worker, engine = \
            rig.audio, rig.voices, rig.cache, rig.renderer, rig.engine
        if audio.message:
            print(audio.message, flush=True)
    except BaseException:
        _drop_unused(journal)
        raise

    loop = asyncio.new_event_loop()
    osc = None
    midi = None
    web = None
    from pgesam_live.frontends.seam import FrontView  # noqa: PLC0415
    view = FrontView(engine, journal_path=journal.path)
    started = False
    interrupted = False  # Ctrl-C or a signal ended the session
    _stop_on_signals()
    try:
        journal.on_error = engine.message
        engine.add_listener(journal)
        print(f"pgesam-live: model {info.model_id}, audio {audio.description}, "
              f"journal {journal.path}", flush=True)
        worker.start()
        audio.start()
        started = True
        threading.Thread(target=loop.run_forever, daemon=True, name="osc-loop").start()
        from pgesam_live.frontends.osc_server import OscServer  # noqa: PLC0415

        # what `status` shows of the page: its address, never its token; "starting" until
        # it listens or is given up (OSC answers from here on, the page starts after)
        web_state = ["starting" if s.web else "off"]
        view.add_info("web", lambda: web.url if web is not None else web_state[0])
        osc = OscServer(view, s.osc_host, s.osc_port)
        asyncio.run_coroutine_threadsafe(osc.start(), loop).result(5)
        osc_stats = osc.stats
        engine.add_stat("osc_skewed", lambda: osc_stats["skewed"])
        print(f"OSC on udp {s.osc_host}:{osc.port}", flush=True)
        if s.web:
            from pgesam_live.frontends.web import start_web  # noqa: PLC0415

            web = start_web(view, loop, s.web_host, s.web_port, audio=audio,
                            message=lambda text: print(text, flush=True))
            web_state[0] = "off"  # (shown only when it did not start)
        if s.midi:
            from pgesam_live.frontends.midi import start_midi  # noqa: PLC0415

            midi = start_midi(view, s.midi, message=print)
        if patch:
            r = engine.submit(f"load {quote(patch)}", src="patch")
            print(r.text if not r.ok else f"loaded {patch}", flush=True)
        if replay is not None:
            import time  # noqa: PLC0415

            from pgesam_live.sessions.replay import submit_schedule  # noqa: PLC0415

            t0 = engine.time_s() + LIVE_PREROLL_S
            submit_schedule(engine, replay, t0, lambda text: print(text, flush=True))
            # As the offline replay: past the last command until what it started is over,
            # sequences still running stopped TAIL_S after it, then the ring-out.
            last = t0 + (replay[-1][0] if replay else 0.0)
            while engine.time_s() < last or (engine.busy() and engine.time_s() < last + TAIL_S):
                time.sleep(0.1)
            _let_go(engine)  # a journal from before quit released its keys
            _ring_out(engine, voices, max_s=RING_OUT_MAX_S)
        elif repl:
            from pgesam_live.frontends.repl import run_repl  # noqa: PLC0415

            run_repl(view)
            if not sys.stdin.isatty():
                _finish_piped(engine, voices)
        else:
            # Wake twice a second: a signal the kernel hands to another thread sets Python's
            # flag but does not interrupt a wait without timeout, so the handlers that
            # _stop_on_signals installed would only run at the next wake-up.
            idle = threading.Event()  # never set: only a signal ends this wait
            while not idle.wait(0.5):
                pass
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Keys still down at quit: released now, in the journal and the recording, so the
        # replay ends them where the performance did (not after an export finishes) and they
        # ring as the instrument does; again after the front ends close (a key pressed while
        # an export finished).
        _release_at_quit(engine, voices, started, interrupted)
        # An export still rendering is finished before the session ends (Ctrl-C: cancelled,
        # and said so); after Ctrl-C or a signal ended the session, cancelled at once.
        engine.finish_exports(lambda text: print(text, flush=True),
                              wait=not interrupted and sys.exc_info()[0] is None)
        if web is not None:
            web.close()
        osc_closed = threading.Event()
        if osc is not None:
            def close_osc(server: Any = osc) -> None:
                server.close()
                osc_closed.set()

            loop.call_soon_threadsafe(close_osc)
        if midi is not None:
            midi.close()
        if osc is not None:
            osc_closed.wait(1.0)  # closed on its loop: no key-down after the last look
        _release_at_quit(engine, voices, started, interrupted)
        loop.call_soon_threadsafe(loop.stop)
        audio.stop()
        audio.close()
        worker.stop()
        engine.close()
        cache.close()
        if not started and journal.count == 0:
            _drop_unused(journal)  # it never played: nothing to keep
        else:
            journal.close()
            lost = f" ({journal.error})" if journal.error else ""
            print(f"session journal {journal.path}{lost}", flush=True)
        if audio.record_path is not None and audio.backend == "record" \
                and Path(audio.record_path).is_file():
            print(f"recorded {audio.record_path}", flush=True)
    return 0
