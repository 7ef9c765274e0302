"""The seam every front end shares: a line from any source, the clients of a network front
end (tagged submissions, pushes without echo, rate, refresh), the front ends' view."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from pgesam_live.frontends.seam import Clients, FrontView, run_line
from pgesam_live.vocab.commands import parse_line
from tests.frontends.test_osc import Clock, FakeEngine


@pytest.mark.parametrize("src, said", [("osc", "over OSC"), ("web", "from the web page"),
                                       ("midi", "from MIDI")])
def test_terminal_words_are_the_terminals_only(src: str, said: str) -> None:
    engine = FakeEngine()
    for word in ("quit", "keys", "keys 0.5 vel 0.3"):
        r = run_line(engine, word, src)
        assert not r.ok and f"is not available {said}" in r.text, r
    assert engine.submitted == []
    assert run_line(engine, "quit", "repl").word == "quit"
    keys = run_line(engine, "keys 0.5", "repl")
    assert keys.word == "keys" and keys.command is not None
    assert keys.command.args["len_beats"] == 0.5


def test_a_line_from_any_source() -> None:
    engine = FakeEngine()
    r = run_line(engine, "tempo 90", "web")
    assert r.ok and r.text == "tempo 90" and engine.submitted == [("web", "tempo 90", None)]
    bad = run_line(engine, "tempo 900", "web")
    assert not bad.ok and "out of range 20..400" in bad.text
    assert not run_line(engine, "bogus", "web").ok
    assert run_line(engine, "  # a comment", "web") == run_line(engine, "", "web")
    status = run_line(engine, "status", "web")
    assert status.ok and status.answer is not None and status.answer.data["tempo_bpm"] == 90
    seqs = run_line(engine, "seqs", "osc").answer
    assert seqs is not None and seqs.data == (["arp"], [])
    assert len(engine.submitted) == 1  # the front-end words were answered, not submitted


def test_an_engine_bug_is_one_line() -> None:
    class Broken(FakeEngine):
        def submit(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("kaboom")

    r = run_line(Broken(), "tempo 90", "web")
    assert not r.ok and r.text.startswith("internal error: RuntimeError: kaboom")


def make_clients(refresh_s: float | None = None, deferred: bool = True
                 ) -> tuple[Clients, FakeEngine, Clock]:
    engine = FakeEngine(deferred)
    clock = Clock()
    clients = Clients(engine, "web", Counter(), clock=clock, refresh_s=refresh_s)
    engine.add_listener(clients.on_event)
    return clients, engine, clock


def test_a_clients_own_change_is_not_pushed_back_to_it() -> None:
    clients, engine, clock = make_clients()
    for c in ("A", "B"):
        assert clients.listen(c)
        clients.greeted(c, engine.snapshot())
    assert clients.submit(parse_line("at 0.3 -0.2"), "A").ok
    applier = threading.Thread(target=engine.apply_pending)  # the audio thread applies it
    applier.start()
    applier.join()
    clock.now += 1
    pushes, refused = clients.poll()
    assert [c for c, _ in pushes] == ["B"] and refused == []
    assert pushes[0][1]["point"] == [0.3, -0.2]
    # A change from elsewhere (the REPL) goes to both
    engine.submit("tempo 99", src="repl")
    engine.apply_pending()
    clock.now += 1
    assert sorted(c for c, _ in clients.poll()[0]) == ["A", "B"]


def test_pushes_are_rate_limited_and_the_latest_wins() -> None:
    clients, engine, clock = make_clients(deferred=False)
    clients.listen("B")
    got: list[float] = []
    for i in range(1000):  # 1,000 changes in one second, polled every millisecond
        clock.now += 0.001
        engine.state["tempo_bpm"] = 100.0 + i / 10
        engine.emit({"kind": "state", **engine.state})
        got += [snap["tempo_bpm"] for _, snap in clients.poll()[0]]
    clock.now += 0.1
    got += [snap["tempo_bpm"] for _, snap in clients.poll()[0]]
    assert 25 <= len(got) <= 31 and got[-1] == pytest.approx(199.9)


def test_refresh_sends_what_changed_by_itself_but_not_a_clients_own_move() -> None:
    clients, engine, clock = make_clients(refresh_s=0.5)
    clients.listen("A")
    clients.greeted("A", engine.snapshot())
    clients.poll()
    clients.submit(parse_line("at 0.1 0.1"), "A")
    engine.apply_pending()
    clock.now += 1.0
    assert clients.poll()[0] == []  # A knows its own move
    engine.state["voices_in_use"] = 3  # a note sounding: no command, no event
    clock.now += 1.0
    ((who, snap),) = clients.poll()[0]
    assert who == "A" and snap["voices_in_use"] == 3
    clock.now += 1.0
    assert clients.poll()[0] == []  # nothing new


def test_a_refusal_when_due_goes_to_its_client_and_a_gone_client_is_forgotten() -> None:
    clients, engine, _ = make_clients()
    clients.submit(parse_line("at 0.1 0.1"), "A", note="first")
    clients.submit(parse_line("at 0.2 0.2"), "B", note="second")
    (_, _, _, tag_a), (_, _, _, tag_b) = engine.queue
    clients.forget("B")
    for tag in (tag_a, tag_b):
        clients.on_event({"kind": "rejected", "src": "web", "tag": tag, "text": "no"})
    _, refused = clients.poll()
    assert [(r.client, r.note, r.text) for r in refused] == [("A", "first", "no")]


def test_the_front_ends_view_adds_its_facts_to_the_snapshot() -> None:
    engine = FakeEngine()
    view = FrontView(engine)
    view.add_info("web", lambda: "http://127.0.0.1:8765/")
    view.add_info("broken", lambda: 1 / 0)
    snap = view.snapshot()
    assert snap["web"] == "http://127.0.0.1:8765/" and snap["tempo_bpm"] == 120.0
    assert snap["broken"].startswith("unavailable")
    assert "web: http://127.0.0.1:8765/" in run_line(view, "status", "repl").text
    assert view.submit("tempo 80", src="web").ok and engine.submitted[-1][0] == "web"


def test_export_is_a_front_end_word_answered_by_the_engines_exporter() -> None:
    """`export [DIR]` is not journalled: it starts the engine's export with the line's source
    (so OSC and the web page stay confined); a refusal is an error line; an engine without an
    exporter says so."""
    from pgesam_live.vocab.views import Reply

    calls: list[dict[str, Any]] = []

    class Exporting(FakeEngine):
        def start_export(self, point: Any = None, out_dir: Any = None, pitches: Any = None,
                         src: str = "repl", name: Any = None) -> Reply:
            calls.append({"out_dir": out_dir, "src": src})
            if src != "repl" and out_dir is not None:
                return Reply(False, f"export from {src}: only into the sessions folder")
            return Reply(True, f"export: rendering 37 notes into {out_dir or 'sessions'}")

    eng = Exporting()
    r = run_line(FrontView(eng), "export", "repl")
    assert r.ok and "rendering 37 notes" in r.text
    r = run_line(FrontView(eng), "export /tmp/x", "web")
    assert not r.ok and "only into the sessions folder" in r.text
    assert calls == [{"out_dir": None, "src": "repl"}, {"out_dir": "/tmp/x", "src": "web"}]
    assert not any(c == "export" for c, _ in getattr(eng, "got", []))
    r = run_line(FrontView(FakeEngine()), "export", "repl")
    assert not r.ok and "no exporter" in r.text
