"""The model is a library: importing it (and every submodule) never loads the live layer.

Runs in a fresh interpreter, because this test process has likely imported pyo & co already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

FORBIDDEN = ("pyo", "prompt_toolkit", "pythonosc", "mido", "rtmidi")
# Outside model/, the library may use only the package root, the error family and the note
# names (pure vocabulary: `--pitches C2-C6` reads like a REPL pitch; no audio, no I/O).
ALLOWED_LIVE = ("pgesam_live", "pgesam_live.errors", "pgesam_live.notes")

_PROBE = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import pgesam_live.model as m
    failed = {}
    names = sorted(i.name for i in pkgutil.iter_modules(m.__path__, "pgesam_live.model."))
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # report, don't hide: a broken submodule fails the test
            failed[name] = f"{type(e).__name__}: {e}"
    print(json.dumps({"modules": sorted(sys.modules), "submodules": names, "failed": failed}))
""")


@pytest.fixture(scope="module")
def probe() -> dict[str, object]:
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYO_GUI_WX": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_submodule_imports(probe: dict) -> None:
    # The probe must actually have walked the package, or the next tests prove nothing.
    assert "pgesam_live.model.synth" in probe["submodules"]
    assert "pgesam_live.model.train" in probe["submodules"]
    assert probe["failed"] == {}


def test_no_live_layer_dependencies_loaded(probe: dict) -> None:
    mods = probe["modules"]
    loaded = sorted(m for m in mods if m.split(".")[0] in FORBIDDEN)
    assert loaded == [], f"importing pgesam_live.model loaded {loaded}"


def test_no_live_layer_modules_loaded(probe: dict) -> None:
    mods = probe["modules"]
    live = sorted(m for m in mods if m.startswith("pgesam_live") and
                  not m.startswith("pgesam_live.model") and m not in ALLOWED_LIVE)
    assert live == [], f"importing pgesam_live.model loaded live-layer modules {live}"


def test_probe_detects_a_forbidden_import() -> None:
    # The check itself can fail: a process that imports mido is caught by the same logic.
    r = subprocess.run([sys.executable, "-c",
                        "import json, sys, mido; print(json.dumps(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-500:]
    mods = json.loads(r.stdout)
    assert [m for m in mods if m.split(".")[0] in FORBIDDEN]
