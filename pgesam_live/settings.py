"""Typed settings: defaults < environment (PGESAM_*) < patch < command line.

A frozen dataclass; `Settings.from_env()` reads the environment, `.replace(**changes)` layers
a patch's or the command line's values on top.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgesam_live.errors import ConfigError
from pgesam_live.files import user_cache_dir
from pgesam_live.vocab.commands import (
    LOOKAHEAD_MAX_S,
    LOOKAHEAD_MIN_S,
    TEMPO_MAX_BPM,
    TEMPO_MIN_BPM,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# A field's annotation (a string: `from __future__ import annotations`) -> its converter; an
# optional field converts as its type (`sample_rate: int | None` from "48000" is 48000).
_KINDS: dict[str, type] = {"bool": bool, "int": int, "float": float, "Path": Path, "str": str,
                           "int | None": int, "float | None": float, "str | None": str}


@dataclass(frozen=True)
class Settings:
    model: str = "default"
    device: str = "auto"
    audio: str = "auto"
    osc_host: str = "127.0.0.1"
    osc_port: int = 9000
    midi: str | None = None
    web: bool = True                    # serve the web page (`--no-web`: not)
    web_host: str = "127.0.0.1"
    web_port: int = 8765
    sample_rate: int | None = None      # output rate; None = the model's rate
    buffer_size: int = 256              # samples per audio block
    n_voices: int = 32
    lookahead_s: float = 0.2
    tempo_bpm: float = 120.0
    seed: int = 0
    cache_max_bytes: int = 512 * 1024 * 1024
    cache_grid: float = 0.02            # x, y quantum of the render cache
    cache_spill: bool = True            # keep rendered notes on disk between runs
    cache_dir: Path = dataclasses.field(default_factory=user_cache_dir)
    patch_dir: Path = REPO_ROOT / "patches"
    session_dir: Path = Path("sessions")
    worker_threads: int = 1             # torch threads in the synthesis worker

    def __post_init__(self) -> None:
        unknown = [f.name for f in dataclasses.fields(self) if str(f.type) not in _KINDS]
        assert not unknown, f"settings fields without a converter: {unknown}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Defaults overridden by PGESAM_<FIELD> environment variables."""
        env = dict(os.environ if env is None else env)
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"PGESAM_{f.name.upper()}")
            if raw is not None:
                changes[f.name] = raw
        return cls().replace(**changes)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (None values are ignored), converted and checked."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                continue
            if name not in fields:
                raise ConfigError(f"unknown setting {name!r}: choose one of {', '.join(fields)}")
            kind = _KINDS.get(str(fields[name].type), str)
            try:
                if kind is bool:
                    value = value if isinstance(value, bool) else str(value).lower() in (
                        "1", "true", "yes", "on")
                elif kind is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)  # a seed of 1.7 is not silently 1
                elif isinstance(value, bool) and kind in (int, float):
                    raise ValueError(value)
                elif not isinstance(value, kind):
                    value = kind(value)
            except (ValueError, TypeError, OverflowError) as e:
                raise ConfigError(f"setting {name}: {value!r} is not a valid "
                                  f"{kind.__name__}") from e
            clean[name] = value
        out = dataclasses.replace(self, **clean)
        out.check()
        return out

    def check(self) -> None:
        if self.audio not in ("auto", "portaudio", "jack", "record", "none", "offline"):
            raise ConfigError(f"audio {self.audio!r}: choose auto, portaudio, jack, record or none")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device {self.device!r}: choose auto, cpu or cuda")
        if not LOOKAHEAD_MIN_S <= self.lookahead_s <= LOOKAHEAD_MAX_S:
            raise ConfigError(f"lookahead {self.lookahead_s} s is out of range "
                              f"{LOOKAHEAD_MIN_S:g}..{LOOKAHEAD_MAX_S:g}")
        if not TEMPO_MIN_BPM <= self.tempo_bpm <= TEMPO_MAX_BPM:  # also refuses nan
            raise ConfigError(f"tempo {self.tempo_bpm} bpm is out of range "
                              f"{TEMPO_MIN_BPM:g}..{TEMPO_MAX_BPM:g}")
        if not 1 <= self.n_voices <= 256:
            raise ConfigError(f"voices {self.n_voices} is out of range 1..256")
        if not 0 < self.osc_port < 65536:
            raise ConfigError(f"OSC port {self.osc_port} is out of range 1..65535")
        if not 0 < self.web_port < 65536:
            raise ConfigError(f"web port {self.web_port} is out of range 1..65535")
        if self.sample_rate is not None and not 8000 <= self.sample_rate <= 192000:
            raise ConfigError(f"sample rate {self.sample_rate} Hz is out of range "
                              "8000..192000")
        if not 0.001 <= self.cache_grid <= 0.5:  # also refuses nan
            raise ConfigError(f"cache grid {self.cache_grid} is out of range 0.001..0.5 "
                              "(map units)")
