"""A conformance suite for TCP servers built on the Reactor pattern.

``conformance.check_server(...)`` runs it from another project's tests
(:mod:`conformance.api`); it is imported on first use, so that importing the
package (as the pytest plugin's catalogue does) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conformance.version import __version__

if TYPE_CHECKING:
    from conformance.api import check_server

__all__ = ["__version__", "check_server"]


def __getattr__(name: str) -> Any:
    if name == "check_server":
        from conformance.api import check_server

        return check_server
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")
