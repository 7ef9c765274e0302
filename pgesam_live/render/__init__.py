"""Rendering notes: the synthesis process and its client, the in-process renderer, the note
cache and sample processing."""
