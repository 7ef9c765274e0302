"""YAML patches: the format, its validation and the patch folder."""
