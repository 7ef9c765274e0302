"""Shared fixtures: a General MIDI soundfont (skipped with a reason where libfluidsynth or a
soundfont is absent) and a note renderer built on pgesam_live.model.soundfont.render_note."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# One torch thread for the whole suite: the tiny test models are dominated by per-op overhead,
# and two OpenMP threads on a shared 2-core machine wait on each other at every op.
os.environ.setdefault("PGESAM_TORCH_THREADS", "1")
os.environ.setdefault("PYO_GUI_WX", "0")


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return
    torch.set_num_threads(1)


# Smallest first: TimGM6mb is what .ci/run installs; the others are larger and slower to load.
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
)
SOUNDFONT_HINT = "apt-get install libfluidsynth3 timgm6mb-soundfont"


def find_soundfont() -> tuple[str | None, str]:
    """(path, '') of a usable GM soundfont, or (None, why not). PGESAM_TEST_SOUNDFONT wins."""
    try:
        import fluidsynth  # noqa: F401, PLC0415
    except (ImportError, OSError) as e:  # the wheel loads libfluidsynth at import
        return None, f"libfluidsynth is missing ({e}); {SOUNDFONT_HINT}"
    wanted = os.environ.get("PGESAM_TEST_SOUNDFONT")
    for path in ([wanted] if wanted else []) + list(SOUNDFONT_CANDIDATES):
        if Path(path).is_file():
            return path, ""
    return None, f"no General MIDI soundfont found; {SOUNDFONT_HINT}"


@pytest.fixture(scope="session")
def soundfont_path() -> str:
    """Path of a GM soundfont; skips the test with the reason when none can be used."""
    path, why = find_soundfont()
    if path is None:
        pytest.skip(why)
    return path


RenderGM = Callable[..., np.ndarray]


@pytest.fixture(scope="session")
def render_gm(soundfont_path: str) -> RenderGM:
    """render_gm(program, pitch, velocity=100, sample_rate=24000, hold_s=3.0, release_s=1.0)
    -> float32 [N]: one GM note from `soundfont_path`, reverb and chorus off."""
    from pgesam_live.model.soundfont import render_note  # noqa: PLC0415

    def render(program: int, pitch: int, velocity: int = 100, sample_rate: int = 24000,
               hold_s: float = 3.0, release_s: float = 1.0) -> np.ndarray:
        return render_note(soundfont_path, program, pitch, velocity=velocity,
                           sample_rate=sample_rate, hold_s=hold_s, release_s=release_s)

    return render
