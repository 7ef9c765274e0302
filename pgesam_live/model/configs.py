"""Config dataclasses <-> plain dicts, for model files and training states.

A leaf of the model package (it imports no other model module), so that vae.py and
transformer.py can rebuild their configs from a stored dict and checkpoints.py can store them,
without an import circle between the networks and the file format.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch

from pgesam_live.errors import ConfigError


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (tuples become lists: weights_only-safe)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return _plain(d)


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild `cls` from `config_to_dict`'s output; unknown keys are an error (stale file).
    The one implementation behind VAEConfig.from_dict and TransformerConfig.from_dict."""
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}: valid keys are "
                          f"{sorted(names)}")
    kw = {}
    for k, v in d.items():
        # Dataclass fields declared as tuples were stored as lists.
        kw[k] = tuple(v) if isinstance(v, list) and "tuple" in str(names[k].type) else v
    return cls(**kw)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):  # int keys stay ints (optimiser states index params by int)
        return {(int(k) if isinstance(k, int) else _plain(str(k))): _plain(v)
                for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, str):
        # Interned: pickle shares equal strings by identity, so without this the same content
        # could give different bytes (and a different hash) depending on where it came from.
        return sys.intern(str(x))  # str(): subclasses (TorchVersion) are not weights-safe
    for base in (int, float):  # subclasses (IntEnum, numpy scalars) are not weights-safe
        if isinstance(x, base):
            return base(x)
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    return str(x)


__all__ = ["config_from_dict", "config_to_dict"]
