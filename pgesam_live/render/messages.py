"""The typed messages between the render client (the engine's side) and the synthesis
process. All are picklable dataclasses: a process queue carries them as they are.

client -> process: RenderRequest, Cancel, Stop
process -> client: Ready, Fatal, Rendered, Failed
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgesam_live.render.keys import NoteKey


@dataclass(frozen=True, order=True)
class RenderRequest:
    """One note to render; ordered by deadline (engine seconds), then by a sequence number."""

    deadline_s: float
    seq: int
    key: NoteKey

    @property
    def x(self) -> float:
        """The point's x as the key has it (quantised to the cache grid)."""
        return self.key.xq

    @property
    def y(self) -> float:
        return self.key.yq


@dataclass(frozen=True)
class Cancel:
    """Renders not wanted any more (the performer's point moved on)."""

    keys: tuple[NoteKey, ...]


@dataclass(frozen=True)
class Stop:
    """End the process."""


@dataclass(frozen=True)
class Ready:
    """The model is loaded."""

    model_id: str
    sample_rate: int
    device: str


@dataclass(frozen=True)
class Fatal:
    """The model could not be loaded; the process has ended."""

    text: str


@dataclass(frozen=True)
class Rendered:
    """One note, float32 [N] at the model's rate, at the playing level (dsp.normalise_peak)."""

    key: NoteKey
    audio: np.ndarray


@dataclass(frozen=True)
class Failed:
    """A note the model failed to render."""

    key: NoteKey
    text: str


ToProcess = RenderRequest | Cancel | Stop
FromProcess = Ready | Fatal | Rendered | Failed
