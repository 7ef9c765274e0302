"""The engine: the one door (Commands in, events out) and the scheduler (musical clock,
streams, look-ahead)."""
