"""The OSC wire format: a strict check of a datagram (every malformed one is answered, never
dropped), its messages with their time tags, and encoding a reply."""

from __future__ import annotations

from typing import Any

# The type tags python-osc parses ('c' and 'I' are OSC too, but it drops them silently).
_FIXED_SIZES = {"i": 4, "f": 4, "r": 4, "m": 4, "d": 8, "h": 8, "t": 8,
                "T": 0, "F": 0, "N": 0, "[": 0, "]": 0}
MAX_BUNDLE_DEPTH = 8  # bundles in bundles: deeper ones are refused, not recursed into


def _padded_string_end(data: bytes, start: int) -> int:
    """End of the 4-byte padded, NUL-terminated string at `start` (ValueError if none)."""
    nul = data.index(b"\0", start)
    return start + ((nul - start) // 4 + 1) * 4


def strict_problem(data: bytes, depth: int = 0) -> str | None:
    """Why a datagram is not exactly one well-formed OSC packet, or None.

    python-osc pads a short final argument with zeros (a truncated /pgesam/note 60 0.5 reads
    as 60 0.0); the sizes are checked here first so a cut-off datagram is answered, not
    played with made-up values."""
    try:
        if len(data) % 4:
            return f"length {len(data)} is not a multiple of 4 (truncated?)"
        if data.startswith(b"#bundle\0"):
            if depth >= MAX_BUNDLE_DEPTH:
                return f"bundles nested deeper than {MAX_BUNDLE_DEPTH}; flatten them"
            pos = 16
            if len(data) < pos:
                return "bundle header is truncated"
            while pos < len(data):
                if pos + 4 > len(data):
                    return "bundle element size is truncated"
                size = int.from_bytes(data[pos:pos + 4], "big")
                if size % 4 or pos + 4 + size > len(data):
                    return f"bundle element of {size} bytes does not fit (truncated?)"
                inner = strict_problem(data[pos + 4:pos + 4 + size], depth + 1)
                if inner is not None:
                    return inner
                pos += 4 + size
            return None
        if not data.startswith(b"/"):
            return "not an OSC message or bundle"
        pos = _padded_string_end(data, 0)
        if pos == len(data):
            return None   # OSC 1.0 allows an address alone (no type tags, no arguments)
        if data[pos:pos + 1] != b",":
            return "no type tag string"
        tag_end = data.index(b"\0", pos)
        tags = data[pos + 1:tag_end].decode("ascii")
        pos = _padded_string_end(data, pos)
        for tag in tags:
            if tag in _FIXED_SIZES:
                pos += _FIXED_SIZES[tag]
            elif tag in "sS":
                pos = _padded_string_end(data, pos)
            elif tag == "b":
                size = int.from_bytes(data[pos:pos + 4], "big")
                pos += 4 + ((size + 3) // 4) * 4
            else:
                return f"type tag {tag!r} is not supported; send i, h, f, d, s or T/F"
            if pos > len(data):
                return "arguments are truncated"
        if pos != len(data):
            return f"{len(data) - pos} bytes after the last argument"
        return None
    except (ValueError, UnicodeDecodeError):
        return "malformed (unterminated string or bad type tags)"


def timed_messages(data: bytes) -> list[tuple[float | None, Any]]:
    """(timetag as wall-clock seconds, or None for "immediately"; OscMessage) for every
    message in a datagram, nested bundles included. Parsed here rather than with OscPacket,
    which folds past timetags into its own clock reading."""
    from pythonosc.osc_bundle import OscBundle
    from pythonosc.osc_message import OscMessage
    from pythonosc.parsing import osc_types

    if not OscBundle.dgram_is_bundle(data):
        return [(None, OscMessage(data))]
    out: list[tuple[float | None, Any]] = []

    def walk(b: Any) -> None:
        tag = None if b.timestamp == osc_types.IMMEDIATELY else float(b.timestamp)
        for content in b:
            if isinstance(content, OscBundle):
                walk(content)
            else:
                out.append((tag, content))

    walk(OscBundle(data))
    return out


def encode_message(address: str, args: list[Any]) -> bytes:
    """One OSC message datagram (ints as i, floats as f, strings as s)."""
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address=address)
    for a in args:
        if isinstance(a, bool):
            builder.add_arg(int(a), "i")
        elif isinstance(a, int):
            builder.add_arg(a, "i")
        elif isinstance(a, float):
            builder.add_arg(a, "f")
        else:
            builder.add_arg(str(a), "s")
    return builder.build().dgram
