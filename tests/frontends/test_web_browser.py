"""The web page in a real headless Chromium (Debian's `chromium`, through Playwright's Python
API with `executable_path`), against a real instrument (`pgesam-live play --audio record
--no-repl`, a tiny model), as a performer plays it: a click on the map, a drag, the computer
keyboard, a move made elsewhere (OSC) followed by the cursor and #status, a bad line, the
buttons, sequences, listening; and a page of another origin refused. What the page did is read
back from the session journal (src `web`).

Without a Chromium here the tests are skipped with the reason; `.ci/run` installs it and sets
PGESAM_REQUIRE_BROWSER=1, which turns a missing browser into a failure."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from pgesam_live.model.checkpoints import save_model
from pgesam_live.model.synth import Synth
from tests.app.test_live import Client, free_port

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Training points of the test model: a region that is not the nominal square, so a click's
# coordinates are checked against the map's own edges.
TRAINING_POINTS = [
    {"name": "fluidr3_gm_000", "family": "keyboard", "x": 0.26, "y": -0.18},
    {"name": "fluidr3_gm_040", "family": "string", "x": -0.3, "y": 0.1},
    {"name": "fluidr3_gm_073", "family": "flute", "x": -0.2, "y": 0.3},
    {"name": "musescore_general_024", "family": "guitar", "x": 0.45, "y": -0.5},
]


def chromium_path() -> str | None:
    wanted = os.environ.get("PGESAM_CHROMIUM")
    if wanted:
        return wanted
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    why = None
    if path is None:
        why = "no Chromium (apt-get install chromium, or set PGESAM_CHROMIUM)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "Playwright's Python API is not installed (pip install playwright)"
    if why is not None:
        if os.environ.get("PGESAM_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True,
                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            yield b
        finally:
            b.close()


@dataclasses.dataclass
class Instrument:
    proc: subprocess.Popen[str]
    osc: Client
    url: str
    sessions: Path
    model: Path

    def journal(self) -> list[dict[str, Any]]:
        files = sorted(self.sessions.glob("*.jsonl"))
        if not files:
            return []
        return [json.loads(line) for line in files[-1].read_text().splitlines()[1:]
                if line.endswith("}")]

    def web_lines(self, since: int = 0) -> list[str]:
        return [e["cmd"] for e in self.journal()[since:] if e.get("src") == "web"]

    def wait_for(self, test: Callable[[list[str]], bool], since: int,
                 timeout_s: float = 5.0) -> list[str]:
        end = time.monotonic() + timeout_s
        lines = self.web_lines(since)
        while not test(lines) and time.monotonic() < end:
            time.sleep(0.05)
            lines = self.web_lines(since)
        return lines


@pytest.fixture(scope="module")
def instrument(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instrument]:
    sy = Synth.untrained("tiny", device="cpu")
    meta = dataclasses.replace(sy.meta, training_points=TRAINING_POINTS)
    model = save_model(tmp_path_factory.mktemp("ckpt"), sy.vae, sy.transformer, meta)
    here = tmp_path_factory.mktemp("live")
    osc_port, web_port = free_port(), free_port()
    env = {**os.environ, "PYO_GUI_WX": "0", "XDG_CACHE_HOME": str(here / "cache"),
           "PGESAM_HISTORY": str(here / "hist")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgesam_live", "play", "--audio", "record", "--no-repl",
         "--model", str(model), "--osc-port", str(osc_port), "--web-port", str(web_port),
         "--device", "cpu"],
        cwd=here, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{web_port}/"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                out = proc.communicate(timeout=5)[0] if proc.poll() is not None else ""
                pytest.fail(f"the instrument's page did not answer: {out}")
            time.sleep(0.2)
        yield Instrument(proc, Client(osc_port), url, here / "sessions", model)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = ""
    assert proc.returncode == 0, out


@pytest.fixture()
def page(browser: Any, instrument: Instrument) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(instrument.url)
    pg.wait_for_function("document.getElementById('conn').textContent === 'connected'")
    pg.wait_for_selector("#dots circle", state="attached")
    try:
        yield pg
    finally:
        context.close()
    assert errors == []  # no script error on the page


def map_pixel(pg: Any, x: float, y: float) -> tuple[float, float]:
    """Where latent (x, y) is on the screen, from #map's box and its data-* edges."""
    box = pg.locator("#map").bounding_box()
    edges = pg.eval_on_selector("#map", "m => [m.dataset.xMin, m.dataset.xMax, "
                                         "m.dataset.yMin, m.dataset.yMax].map(Number)")
    x0, x1, y0, y1 = edges
    return (box["x"] + (x - x0) / (x1 - x0) * box["width"],
            box["y"] + (y1 - y) / (y1 - y0) * box["height"])


def parse_at(line: str) -> tuple[float, float]:
    _, x, y = line.split()
    return float(x), float(y)


def test_the_map_shows_the_training_region(page: Any) -> None:
    edges = page.eval_on_selector("#map", "m => [m.dataset.xMin, m.dataset.xMax, "
                                           "m.dataset.yMin, m.dataset.yMax].map(Number)")
    x0, x1, y0, y1 = edges
    assert x1 - x0 == pytest.approx(y1 - y0) and x1 - x0 < 1.5   # zoomed on the points
    for p in TRAINING_POINTS:
        assert x0 < p["x"] < x1 and y0 < p["y"] < y1
    assert page.locator("#dots circle").count() == len(TRAINING_POINTS)
    assert "Acoustic Grand Piano" in page.locator("#dots circle title").first.text_content()
    assert page.locator("#legend li").count() == 4


def test_a_click_moves_the_point_there_and_plays_the_pitch(page: Any,
                                                          instrument: Instrument) -> None:
    since = len(instrument.journal())
    page.fill("#pitch", "62")
    px, py = map_pixel(page, 0.1, -0.25)
    page.mouse.click(px, py)
    lines = instrument.wait_for(lambda ls: len(ls) >= 2, since)
    assert lines[0].startswith("at ") and lines[1] == "note 62", lines
    x, y = parse_at(lines[0])
    assert abs(x - 0.1) <= 0.02 and abs(y + 0.25) <= 0.02, lines
    # the toggle off: a click only moves
    page.uncheck("#click-plays")
    since = len(instrument.journal())
    page.mouse.click(*map_pixel(page, -0.2, 0.2))
    time.sleep(0.6)
    lines = instrument.web_lines(since)
    assert len(lines) == 1 and lines[0].startswith("at "), lines


def test_a_tap_on_a_touch_screen_is_a_click(browser: Any, instrument: Instrument) -> None:
    context = browser.new_context(viewport={"width": 800, "height": 1000}, has_touch=True,
                                  is_mobile=True)
    try:
        pg = context.new_page()
        pg.goto(instrument.url)
        pg.wait_for_function("document.getElementById('conn').textContent === 'connected'")
        since = len(instrument.journal())
        pg.touchscreen.tap(*map_pixel(pg, 0.3, 0.0))
        lines = instrument.wait_for(lambda ls: len(ls) >= 2, since)
    finally:
        context.close()
    x, y = parse_at(lines[0])
    assert abs(x - 0.3) <= 0.02 and abs(y) <= 0.02 and lines[1] == "note 60", lines


def test_a_drag_moves_the_point_without_retriggering(page: Any, instrument: Instrument) -> None:
    since = len(instrument.journal())
    page.mouse.move(*map_pixel(page, -0.3, -0.3))
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(*map_pixel(page, -0.3 + 0.06 * i, -0.3 + 0.04 * i))
        time.sleep(0.03)
    page.mouse.up()
    lines = instrument.wait_for(lambda ls: len(ls) >= 6 and parse_at(ls[-1])[0] > 0.25, since)
    moves = [ln for ln in lines if ln.startswith("at ")]
    assert [ln for ln in lines if ln.startswith("note")] == ["note 60"]  # the press only
    assert len(moves) >= 5, lines
    x, y = parse_at(moves[-1])
    assert abs(x - 0.3) <= 0.02 and abs(y - 0.1) <= 0.02


def test_keys_hold_notes_until_key_up_and_move_the_octave(page: Any,
                                                          instrument: Instrument) -> None:
    since = len(instrument.journal())
    page.keyboard.down("a")
    page.keyboard.down("a")   # auto-repeat: ignored
    page.keyboard.down("a")
    time.sleep(0.2)
    page.keyboard.up("a")
    page.fill("#velocity", "0.5")
    page.locator("#map").focus()
    page.keyboard.press("x")   # an octave up
    page.keyboard.press("w")   # C#5
    page.keyboard.press("q")   # the octave toggle: one more
    page.keyboard.press("a")   # C6
    page.keyboard.press("x")
    page.keyboard.press("a")   # C7: beyond what the model plays, refused; no release sent
    page.keyboard.press("q")
    page.keyboard.press("z")
    page.keyboard.press("z")
    page.keyboard.press("k")   # back to C5
    lines = instrument.wait_for(lambda ls: len(ls) >= 8, since)
    assert lines[:2] == ["note 60 0.8 hold", "release 60"], lines
    # (a key's release goes once its note was accepted: taps faster than that interleave)
    notes = [ln for ln in lines if ln.startswith("note")]
    assert notes == ["note 60 0.8 hold", "note 73 0.5 hold", "note 84 0.5 hold",
                     "note 72 0.5 hold"], lines
    for pitch in (73, 84, 72):
        assert lines.index(f"release {pitch}") > lines.index(f"note {pitch} 0.5 hold"), lines
    assert len(lines) == 8 and "release 96" not in lines, lines
    page.wait_for_function("document.getElementById('log').textContent"
                           ".includes('note: pitch 96 is outside')")


def test_the_cursor_and_status_follow_a_move_made_elsewhere(page: Any,
                                                            instrument: Instrument) -> None:
    instrument.osc.send("/pgesam/timbre", 0.15, 0.25)
    page.wait_for_function("document.getElementById('status').textContent"
                           ".includes('at (+0.15, +0.25)')", timeout=5000)
    cursor = page.locator("#cursor")
    assert float(cursor.get_attribute("data-x")) == pytest.approx(0.15, abs=1e-3)
    ring = page.locator("#cursor circle").bounding_box()
    cx, cy = ring["x"] + ring["width"] / 2, ring["y"] + ring["height"] / 2
    want = map_pixel(page, 0.15, 0.25)
    assert abs(cx - want[0]) < 3 and abs(cy - want[1]) < 3
    # a glide: the cursor moves by itself
    instrument.osc.send("/pgesam/glide", -0.25, -0.1, 2.0)
    page.wait_for_function("document.getElementById('status').textContent"
                           ".includes('at (-0.25, -0.10)')", timeout=5000)


def test_a_bad_line_shows_its_error_and_a_good_one_its_effect(page: Any,
                                                               instrument: Instrument) -> None:
    since = len(instrument.journal())
    for line in ("tempo 900", "load /etc/passwd", "quit"):
        page.fill("#cmd", line)
        page.press("#cmd", "Enter")
    page.wait_for_function("document.querySelectorAll('#log .error').length >= 3")
    errors = page.locator("#log .error").all_text_contents()[-3:]
    assert "out of range 20..400" in errors[0]
    assert "no patch '/etc/passwd'" in errors[1] and "from the web page only" in errors[1]
    assert "not available from the web page" in errors[2]
    page.fill("#cmd", "tempo 96")
    page.press("#cmd", "Enter")
    page.wait_for_function("document.getElementById('status').textContent"
                           ".startsWith('tempo 96')", timeout=5000)
    page.fill("#cmd", "help tempo")
    page.press("#cmd", "Enter")
    page.wait_for_function("document.getElementById('log').textContent.includes('usage: tempo')")
    page.fill("#cmd", "status")   # the page's address is there, no token
    page.press("#cmd", "Enter")
    page.wait_for_function("document.getElementById('log').textContent"
                           f".includes('web: {instrument.url}')")
    assert instrument.web_lines(since) == ["tempo 96"]


def test_sequences_buttons_and_the_patch_points(page: Any, instrument: Instrument) -> None:
    since = len(instrument.journal())
    page.fill("#cmd", "load morph.yaml")
    page.press("#cmd", "Enter")
    page.wait_for_selector("#stars .point", state="attached")   # the patch's named points
    # the patch starts its sequence: listed as running, with a stop button
    page.wait_for_selector('#seqs li.running[data-name="motif"]')
    page.locator('#seqs li[data-name="motif"] button.stop').click()
    page.wait_for_selector('#seqs li[data-name="motif"]:not(.running) button.start')
    page.locator('#seqs li[data-name="motif"] button.start').click()
    page.wait_for_selector('#seqs li.running[data-name="motif"]')
    page.click("#hush")
    page.click("#panic")
    lines = instrument.wait_for(lambda ls: "panic" in ls, since)
    assert lines == ["load morph.yaml", "stop motif", "start motif", "hush", "panic"]


def test_listening_streams_the_output_to_the_page_with_its_latency(page: Any) -> None:
    page.click("#listen")
    page.wait_for_function("document.getElementById('latency').dataset.ms !== undefined",
                           timeout=10000)
    time.sleep(1.0)
    played = page.evaluate("S.listen.played")
    latency_ms = float(page.get_attribute("#latency", "data-ms"))
    assert played > 12000     # half a second of the master output played here
    assert 0 < latency_ms < 1000, latency_ms
    assert "listening: latency" in page.inner_text("#latency")
    page.click("#listen")
    assert page.get_attribute("#latency", "data-ms") is None


class _Evil(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:   # noqa: N802  (http.server's name)
        body = f"""<html><body><script>
        window.result = {{}};
        const ws = new WebSocket("ws://{self.target}/ws");
        ws.onopen = () => {{ window.result.ws = "open"; ws.send('{{"cmd": "panic"}}'); }};
        ws.onerror = () => {{ window.result.ws = "refused"; }};
        fetch("http://{self.target}/cmd", {{method: "POST", body: "panic",
              mode: "no-cors"}}).then(() => {{ window.result.post = "sent"; }});
        </script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_page_of_another_origin_cannot_drive_the_instrument(browser: Any,
                                                              instrument: Instrument) -> None:
    _Evil.target = instrument.url.removeprefix("http://").rstrip("/")
    evil = HTTPServer(("127.0.0.1", 0), _Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    since = len(instrument.journal())
    context = browser.new_context()
    try:
        pg = context.new_page()
        pg.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        pg.wait_for_function("window.result.ws !== undefined && window.result.post", timeout=5000)
        assert pg.evaluate("window.result.ws") == "refused"
    finally:
        context.close()
        evil.shutdown()
    time.sleep(0.3)
    assert instrument.web_lines(since) == []


def test_a_second_instrument_on_the_same_web_port_plays_on_without_the_page(
        instrument: Instrument, tmp_path: Path) -> None:
    """The port taken (here by the first instrument): one line naming --web-port, and the
    second instrument plays (OSC answers, its status says the page is off)."""
    web_port = int(instrument.url.rsplit(":", 1)[1].strip("/"))
    osc_port = free_port()
    env = {**os.environ, "PYO_GUI_WX": "0", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "pgesam_live", "play", "--audio", "none", "--no-repl",
            "--osc-port", str(osc_port), "--web-port", str(web_port), "--device", "cpu",
            "--model", str(instrument.model)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        c = Client(osc_port)
        state: dict[str, Any] = {}
        for _ in range(150):
            c.send("/pgesam/status")
            got = [m for m in c.replies(0.2) if m.address == "/pgesam/state"]
            if got:
                args_ = got[0].params
                state = dict(zip(args_[::2], args_[1::2], strict=True))
                if state.get("web") != "starting":  # OSC answers before the page starts
                    break
        assert state.get("web") == "off", state
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    said = [ln for ln in out.splitlines() if "--web-port" in ln]
    assert len(said) == 1 and f"127.0.0.1:{web_port}" in said[0] and \
        "playing on without the page" in said[0], out
