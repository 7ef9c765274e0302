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
# Outside model/, the library may use only the package root, the error family, the note
# names (pure vocabulary: `--pitches C2-C6` reads like a REPL pitch; no audio, no I/O) and,
# in the source scan below, quiet.py (stdlib only: silences fluidsynth's C output).
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


# -- the same, read from the source: lazy imports count too ---------------------------------------
def _model_imports() -> dict[str, set[str]]:
    """Each model module -> the pgesam_live modules it imports anywhere in its body (lazy
    imports inside functions included; `if TYPE_CHECKING:` blocks left out: they never run)."""
    import ast
    from pathlib import Path

    import pgesam_live.model as m

    out: dict[str, set[str]] = {}
    for path in sorted(Path(m.__path__[0]).glob("*.py")):
        name = f"pgesam_live.model.{path.stem}" if path.stem != "__init__" else \
            "pgesam_live.model"
        tree = ast.parse(path.read_text())
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for n in ast.walk(node)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("pgesam_live"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("pgesam_live")}
        out[name] = deps
    return out


def test_no_model_module_imports_the_live_layer_even_lazily() -> None:
    bad = {mod: sorted(d for d in deps if not d.startswith("pgesam_live.model")
                       and d not in ALLOWED_LIVE + ("pgesam_live.quiet",))
           for mod, deps in _model_imports().items()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_model_package_has_no_import_circles() -> None:
    graph = {k: {d for d in v if d in _model_imports()} for k, v in _model_imports().items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if state.get(start) is None and visit(start, []):
            break
    assert cycle == [], " -> ".join(cycle)
