"""A performer's first ten minutes (issue 17): what they reach for first answers one way from
every front end. The real engine offline, a stand-in synth (tests/fakes.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app.build import OfflineRig  # noqa: E402
from pgesam_live.frontends.osc import OscCore  # noqa: E402
from pgesam_live.frontends.osc_wire import encode_message  # noqa: E402
from pgesam_live.frontends.seam import run_line  # noqa: E402
from pgesam_live.notes import range_text  # noqa: E402
from pgesam_live.settings import Settings  # noqa: E402
from tests.fakes import FakeSynth  # noqa: E402

A = ("127.0.0.1", 9999)


@pytest.fixture
def rig() -> Iterator[OfflineRig]:
    r = OfflineRig(Settings().replace(audio="offline", cache_spill=False), synth=FakeSynth(24000))
    try:
        yield r
    finally:
        r.close()


def osc_errors(core: OscCore, address: str, *args: object) -> list[str]:
    replies = core.handle_datagram(encode_message(address, list(args)), A)
    return [str(r[2][1]) for r in replies if r[1] == "/pgesam/error"]


@pytest.mark.parametrize("pitch", [999, 100, 128, 10])
def test_range_errors_have_one_form_naming_the_models_range(rig: OfflineRig, pitch: int) -> None:
    """`play 999` (beyond MIDI) and `play 100` (beyond the model) say the same thing, in the
    REPL, from /pgesam/cmd and from /pgesam/note, and name the model's range."""
    rendered = rig.engine.model.pitch_range
    want = f"pitch {pitch} is outside what the model plays: {range_text(rendered)}"
    repl = run_line(rig.engine, f"play {pitch}", "repl")
    assert not repl.ok and repl.text == f"play: {want}"
    assert rig.engine.submit(f"note {pitch}").text == f"note: {want}"
    core = OscCore(rig.engine)
    assert osc_errors(core, "/pgesam/note", pitch) == [f"note: {want}"]
    assert osc_errors(core, "/pgesam/cmd", f"play {pitch}") == [f"play: {want}"]
