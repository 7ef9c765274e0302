"""Thin front ends: they translate input into Commands and show what comes back (REPL, OSC,
MIDI; a web page plugs into the same seam, vocab/views.py)."""
