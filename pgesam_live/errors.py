"""One error family. Library code raises these with a message that names the fix; the CLI
prints one line and exits 1; the REPL prints one line and carries on."""

from __future__ import annotations


class PgesamError(Exception):
    """Base of every error the user may see. The message is one line that names the fix."""


class ConfigError(PgesamError):
    """A bad setting, option or configuration value."""


class CheckpointError(PgesamError):
    """A missing, damaged or mismatched checkpoint file (the message names the file)."""


class CodecError(PgesamError):
    """A codec that cannot be built (missing weights, unknown name) or bad codec input."""


class DataError(PgesamError):
    """A data set that is missing, malformed, or empty after filtering."""


class PatchError(PgesamError):
    """A patch that fails validation (the message names file, line and key path)."""


class CommandError(PgesamError):
    """A REPL line / OSC message that does not parse or validate."""


class AudioError(PgesamError):
    """An audio backend that cannot start."""
