"""Imports point one way: each sub-package imports only from the layers below it (and
itself), lazily imported modules included. The model library's own isolation is
tests/model/test_isolation.py."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pgesam_live"

# Lowest first. A module may import its own package and any package of a lower rank.
RANK = {
    "errors": 0,            # the one error family
    "notes": 1, "quiet": 1, "files": 1, "faults": 1,
    "model": 2,             # the library: imports nothing above it
    "vocab": 3,             # the command table, views, sources
    "settings": 4, "patches": 4, "sessions": 4, "render": 4, "audio": 4,
    "engine": 5,            # the door and the scheduler
    "frontends": 6,         # REPL, OSC, MIDI: through vocab/views.py's seam
    "app": 7,               # the builder and the entry points
    "tools": 8,             # bench, map picture
    "cli": 9, "__main__": 10,
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pgesam_live" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "pgesam_live":
                found.update(f"pgesam_live.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_every_module_has_a_layer() -> None:
    names = {p.stem if p.parent == PKG else p.relative_to(PKG).parts[0]
             for p in PKG.rglob("*.py")} - {"__init__"}
    assert names <= set(RANK), f"give these a layer in RANK: {sorted(names - set(RANK))}"


def test_imports_point_down() -> None:
    wrong: list[str] = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if own == "__init__":
            continue
        for module in _imports(path):
            target = _part(module)
            if target is None or target == own:
                continue
            if RANK[target] >= RANK[own]:
                wrong.append(f"{rel}: imports {module} ({target}, layer {RANK[target]} >= "
                             f"{own}'s {RANK[own]})")
    assert wrong == [], "\n".join(wrong)
