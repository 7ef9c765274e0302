"""pgesam-live: a live performance instrument on the pGESAM timbre-map synthesis model."""

from __future__ import annotations

__version__ = "0.1.0"
