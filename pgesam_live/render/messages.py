"""The typed messages between the render client (the engine's side) and the synthesis
process. All are picklable dataclasses: a process queue carries them as they are.

client -> process: RenderRequest, Cancel, Stop
process -> client: Ready, Fatal, Rendered, Failed, and for a streamed request Head (first),
Joined (then), before its Rendered (render/stream.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pgesam_live.render.keys import NoteKey


@dataclass(frozen=True, order=True)
class RenderRequest:
    """One note to render; ordered by deadline (engine seconds), then by a sequence number."""

    deadline_s: float
    seq: int
    key: NoteKey
    # Someone waits for it now (an immediate note): send its head first (render/stream.py).
    stream: bool = field(default=False, compare=False)

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
class Head:
    """A streamed note's first samples, float32 [seam] at the model's rate and at the level
    it starts playing at (render/stream.py): sent before its note is rendered."""

    key: NoteKey
    audio: np.ndarray


@dataclass(frozen=True)
class Joined:
    """A streamed note whole: its head, then the note (joined in the frame domain), float32
    [N] at the model's rate and the streamed level; its first samples are the Head's."""

    key: NoteKey
    audio: np.ndarray


@dataclass(frozen=True)
class Failed:
    """A note the model failed to render."""

    key: NoteKey
    text: str


ToProcess = RenderRequest | Cancel | Stop
FromProcess = Ready | Fatal | Rendered | Failed | Head | Joined
