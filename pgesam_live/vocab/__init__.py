"""The vocabulary every layer shares: the command table (every limit lives there), views
(status line, map) and completion. Imports nothing above it."""
