"""pGESAM as a library: codecs, the timbre VAE, the frame Transformer, data, training,
evaluation, checkpoints and the (x, y, pitch) -> audio synthesiser.

This package must never import the live layer (pyo, prompt_toolkit, pythonosc, mido or the
modules of pgesam_live outside model/); tests/model/test_isolation.py enforces it.
"""

from __future__ import annotations
