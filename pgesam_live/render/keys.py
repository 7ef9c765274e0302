"""A note's address: what made it (the model's content hash, the codec, the timbre point
quantised to the cache grid, the pitch, the render seed), and its file name on disk."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
# A note's file name (NoteKey.file_name) read back when a spill folder is indexed.
FILE_NAME = re.compile(
    r"^(?P<codec>[A-Za-z0-9._-]+)_x(?P<x>[+-]\d+\.\d+)_y(?P<y>[+-]\d+\.\d+)"
    r"_p(?P<pitch>-?\d+)_s(?P<seed>-?\d+)\.npy$"
)


def safe_name(name: str) -> str:
    return _SAFE.sub("-", name) or "-"


def quantise(value: float, grid: float) -> float:
    """value rounded to a multiple of grid; exact to 1e-9 so equal points give equal keys."""
    return round(round(float(value) / grid) * grid, 9) + 0.0  # + 0.0: no -0.0 in keys


@dataclass(frozen=True)
class NoteKey:
    """What a note is made of. xq, yq are the quantised point the worker should render."""

    model_id: str
    codec: str
    xq: float
    yq: float
    pitch: int
    seed: int

    def file_name(self) -> str:
        return (f"{safe_name(self.codec)}_x{self.xq:+.9f}_y{self.yq:+.9f}"
                f"_p{self.pitch}_s{self.seed}.npy")
