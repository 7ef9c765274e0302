"""The session journal (an engine listener) and reading it back for a replay."""
