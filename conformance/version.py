"""The installed version of reactor-conformance, for reports, headers and load hosts.

Its own module, not the package's ``__init__``: the package's ``__init__``
names :func:`conformance.check_server`, which imports most of the suite, and
the modules that print the version are among those.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("reactor-conformance")
except PackageNotFoundError:  # Imported from a source tree that is not installed.
    __version__ = "0+unknown"
