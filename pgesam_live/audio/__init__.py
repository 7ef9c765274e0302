"""The only pyo importers: the audio server (backends, block loop, recordings) and the voice
pool."""
