"""Where the model runs: torch's thread count and the device an option names."""

from __future__ import annotations

import os

import torch

from pgesam_live.errors import ConfigError

_threads_configured = False


def configure_threads() -> int:
    """Set torch's intra-op threads once per process; returns the count.

    `PGESAM_TORCH_THREADS` overrides; otherwise all cores this process may use (torch's own
    default can count hyper-threads or ignore the affinity mask of a container).
    """
    global _threads_configured
    if not _threads_configured:
        env = os.environ.get("PGESAM_TORCH_THREADS")
        try:
            n = int(env) if env else len(os.sched_getaffinity(0))
        except (ValueError, AttributeError):
            n = os.cpu_count() or 1
        torch.set_num_threads(max(1, n))
        _threads_configured = True
    return torch.get_num_threads()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda` without CUDA is a ConfigError."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but torch sees no CUDA GPU: use --device cpu "
                              "or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {device!r}: choose auto, cpu or cuda")


__all__ = ["configure_threads", "resolve_device"]
