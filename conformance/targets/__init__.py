"""Targets: the servers under test, started, watched, read from /proc, stopped."""
