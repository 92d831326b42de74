"""The fronts: the command line, the pytest plugin, the API, and what they share."""
