"""Let packages that import torchaudio at module level load beside the CPU torch wheel.

encodec and pesto-pitch both `import torchaudio` at the top of a module but never call it on
the paths we use (EnCodec's 24 kHz model; PESTO's in-memory prediction). torchaudio's PyPI build
cannot load beside the CPU torch wheel on these machines, so both are installed with --no-deps
and, when torchaudio does not import, an empty stand-in module is registered first. A working
torchaudio, if present, is used untouched.
"""

from __future__ import annotations

import sys
import types


def ensure_torchaudio_importable() -> None:
    """Register an empty `torchaudio` module when the real one is missing or broken."""
    try:
        import torchaudio  # noqa: F401, PLC0415
    except Exception:  # any import failure (missing, or ABI mismatch raising OSError)
        sys.modules.pop("torchaudio", None)
        stub = types.ModuleType("torchaudio")
        stub.__doc__ = "empty stand-in registered by pgesam_live.model.torchaudio_stub"
        sys.modules["torchaudio"] = stub
