"""Tools around the instrument: the bench, the map picture."""
