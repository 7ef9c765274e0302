"""The live instrument as a performer runs it: `pgesam-live play --audio record` in its own
process, driven over OSC from this one, then its journal replayed offline through the same
engine: the same notes at the same times as in the live record."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage

from pgesam_live.frontends.osc_wire import encode_message
from pgesam_live.model.checkpoints import save_model
from pgesam_live.model.synth import Synth

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sy = Synth.untrained("tiny", device="cpu")
    return save_model(tmp_path_factory.mktemp("ckpt"), sy.vae, sy.transformer, sy.meta)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = port

    def send(self, address: str, *args: object) -> None:
        self.sock.sendto(encode_message(address, list(args)), ("127.0.0.1", self.port))

    def replies(self, seconds: float) -> list[OscMessage]:
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                out.append(OscMessage(self.sock.recv(65536)))
            except TimeoutError:
                continue
        return out


def block_envelope(x: np.ndarray, block: int) -> np.ndarray:
    mono = x if x.ndim == 1 else x.mean(axis=1)
    n = len(mono) // block
    return np.sqrt((mono[: n * block].reshape(n, block) ** 2).mean(axis=1))


def start_instrument(model: Path, tmp_path: Path, **popen: Any
                     ) -> tuple[subprocess.Popen[str], Client, dict[str, str]]:
    """`play --audio record --no-repl` in tmp_path, once it answers /pgesam/status; its
    environment too (for a replay)."""
    port = free_port()
    env = {**os.environ, "PYO_GUI_WX": "0", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PGESAM_HISTORY": str(tmp_path / "hist")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgesam_live", "play", "--audio", "record", "--no-repl",
         "--model", str(model), "--osc-port", str(port), "--device", "cpu"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        **popen)
    c = Client(port)
    # Wait for the server: /pgesam/status answers /pgesam/state once it listens.
    for _ in range(150):
        c.send("/pgesam/status")
        if any(m.address == "/pgesam/state" for m in c.replies(0.2)):
            return proc, c, env
    proc.kill()
    pytest.fail("the instrument did not answer /pgesam/status")


def play_then_stop(proc: subprocess.Popen[str], c: Client, sig: int, address: str,
                   *args: Any) -> str:
    """Send one OSC message, let it sound a second, stop the instrument with `sig`; its
    output (the process is killed if it outlives the wait)."""
    try:
        c.send(address, *args)
        time.sleep(1.0)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


def test_live_record_then_offline_replay_matches(tiny_model: Path, tmp_path: Path) -> None:
    proc, c, env = start_instrument(tiny_model, tmp_path)
    try:
        c.send("/pgesam/prerender", 0.2, -0.1, 58, 64)
        ready = [m for m in c.replies(20.0) if m.address == "/pgesam/ready"]
        assert len(ready) == 7
        c.send("/pgesam/timbre", 0.2, -0.1)
        c.send("/pgesam/note", 60, 0.9)
        time.sleep(0.4)
        c.send("/pgesam/cmd", 'seq arp "C4 E4 G4 ~" 0.5')
        time.sleep(10.0)  # the sequence runs for 10 s
        c.send("/pgesam/note", "bad")          # a malformed one is answered, not journalled
        c.send("/pgesam/hush")
        errors = [m for m in c.replies(1.0) if m.address == "/pgesam/error"]
        assert errors and errors[0].params[0] == "/pgesam/note"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # leave no instrument behind
            pytest.fail("the instrument (or a process it left) did not let go of its output "
                        "within 30 s of SIGINT")
    assert proc.returncode == 0, out
    journals = list((tmp_path / "sessions").glob("*.jsonl"))
    wavs = list((tmp_path / "sessions").glob("*.wav"))
    assert len(journals) == 1 and len(wavs) == 1, out
    lines = [json.loads(x) for x in journals[0].read_text().splitlines()]
    assert lines[0]["pgesam_session"] == 1
    cmds = [x["cmd"] for x in lines[1:]]
    assert cmds[:3] == ["prerender 0.2 -0.1 58 64", "at 0.2 -0.1", "note 60 0.9"], cmds
    assert cmds[-1] == "hush"

    live, sr = sf.read(str(wavs[0]), dtype="float32")
    replay = tmp_path / "replay.wav"
    r = subprocess.run(
        [sys.executable, "-m", "pgesam_live", "replay", str(journals[0]), "--out", str(replay),
         "--model", str(tiny_model), "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    off, sr2 = sf.read(str(replay), dtype="float32")
    assert sr == sr2
    block = 256
    a = block_envelope(live, block)
    b = block_envelope(off, block)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    # Onsets (envelope rising from silence) at the same block, within one block.
    def onsets(e: np.ndarray) -> np.ndarray:
        on = (e[1:] > 1e-3) & (e[:-1] <= 1e-4)
        return np.flatnonzero(on) + 1
    oa, ob = onsets(a), onsets(b)
    assert len(oa) >= 2 and len(oa) == len(ob), (oa, ob)
    assert np.abs(oa - ob).max() <= 1
    # And the same sound: the envelopes agree closely overall.
    assert np.corrcoef(a, b)[0, 1] > 0.95


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT while ignored"])
def test_a_signal_stops_the_instrument_cleanly(tiny_model: Path, tmp_path: Path,
                                               how: str) -> None:
    """SIGTERM (a supervisor) and SIGINT to an instrument started with SIGINT ignored (a
    script's background job) both end it through its shutdown: exit 0, a readable WAV, the
    journal closed."""
    ignore = how.startswith("SIGINT")
    proc, c, _ = start_instrument(
        tiny_model, tmp_path,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None)
    out = play_then_stop(proc, c, signal.SIGINT if ignore else signal.SIGTERM,
                         "/pgesam/note", 60, 0.9)
    assert proc.returncode == 0, out
    assert "session journal" in out, out
    wavs = list((tmp_path / "sessions").glob("*.wav"))
    assert len(wavs) == 1 and sf.info(str(wavs[0])).frames > 0


def test_keys_held_at_quit_are_released_in_the_journal(tiny_model: Path, tmp_path: Path) -> None:
    """A key still down when the instrument stops: its `release` is journalled at the end,
    so the replay holds it exactly as long as the performance did."""
    proc, c, _ = start_instrument(tiny_model, tmp_path)
    out = play_then_stop(proc, c, signal.SIGTERM, "/pgesam/cmd", "note C4 0.8 hold")
    assert proc.returncode == 0, out
    journal = next((tmp_path / "sessions").glob("*.jsonl"))
    lines = [json.loads(x) for x in journal.read_text().splitlines()[1:]]
    assert [x["cmd"] for x in lines][-2:] == ["note 60 0.8 hold", "release 60"], lines
    assert lines[-1]["t"] > lines[-2]["t"]  # at quit (when, depends on the machine's load)
    assert lines[-1]["src"] == "patch"  # the instrument's own line, as its hush at an end


class _PipedRig:
    """A live engine and voice pool as `_finish_piped` sees them, on a fake clock: a
    sequence runs until `busy_until`, a note sounds until `sounding_until`."""

    def __init__(self, busy_until: float, sounding_until: float) -> None:
        from types import SimpleNamespace

        self.now = 0.0
        self.busy_until, self.sounding_until = busy_until, sounding_until
        self.submitted: list[tuple[float, str]] = []
        self.held: list[int] = []
        self.renderer = SimpleNamespace(pending=0)
        self.slept_after_silence = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        if not self.in_use():
            self.slept_after_silence += s
        self.now += s

    def busy(self) -> bool:
        return self.now < self.busy_until

    def snapshot(self) -> dict[str, Any]:
        return {"held_now": list(self.held)}

    def in_use(self) -> int:
        return int(self.now < self.sounding_until)

    def submit(self, line: str, src: str = "repl") -> None:
        self.submitted.append((self.now, line))
        if line == "hush":
            self.busy_until = self.now
        if line == "panic":
            self.sounding_until = self.now


def test_piped_input_ends_after_the_sound_has_rung_out() -> None:
    from pgesam_live.app.build import RING_OUT_MAX_S, TAIL_S
    from pgesam_live.app.live import RECORD_SETTLE_S, _finish_piped

    # a last note of 6 s (a re-pitched one): waited for, then the recorder settles
    rig = _PipedRig(busy_until=1.0, sounding_until=6.0)
    _finish_piped(rig, rig, clock=rig.clock, sleep=rig.sleep)
    assert rig.submitted == [] and rig.now >= 6.0
    assert rig.slept_after_silence >= RECORD_SETTLE_S
    # a looping sequence: stopped TAIL_S after the input's end, its notes ring out
    rig = _PipedRig(busy_until=1e9, sounding_until=1e9)
    rig.sounding_until = 1e9
    _finish_piped(rig, rig, clock=rig.clock, sleep=rig.sleep)
    (t_hush, hush), (t_panic, panic) = rig.submitted
    assert hush == "hush" and t_hush == pytest.approx(TAIL_S, abs=0.1)
    assert panic == "panic" and t_panic == pytest.approx(TAIL_S + RING_OUT_MAX_S, abs=0.5)
    # a key still held when the input ends: released (its own release, journalled), then
    # what rings rings out
    rig = _PipedRig(busy_until=0.0, sounding_until=1e9)
    rig.held = [60, 64]
    _finish_piped(rig, rig, clock=rig.clock, sleep=rig.sleep)
    assert [line for _, line in rig.submitted][:2] == ["release 60", "release 64"]
