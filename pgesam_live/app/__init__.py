"""Entry points: `run_*` for the CLI's subcommands and the one builder (build.py) that wires an
engine for play, replay, render and bench. Modules: common (settings, output paths), build,
inputs (which patch and model a run plays), offline (note, render, replay --out), live (play,
live replay), doctor."""

from __future__ import annotations

from pgesam_live.app.build import OfflineRig

__all__ = ["OfflineRig"]
