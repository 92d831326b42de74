"""A conformance suite for TCP servers built on the Reactor pattern."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reactor-conformance")
except PackageNotFoundError:  # Imported from a source tree that is not installed.
    __version__ = "0+unknown"

__all__ = ["__version__"]
