"""Write a throwaway CA and a server certificate for 127.0.0.1, as the TLS runs need them.

The tox environments that run the suite over TLS (``conformance-tls-*``) call
this in ``commands_pre`` to fill their ``{envtmpdir}``: certificates are made
at run time by trustme, never committed, and valid for the loopback names
only. Each server takes its key and certificate in the shape it reads:

- ``ca.pem``: the CA certificate, for ``reactor-conformance run --tls-ca``;
- ``server.pem``: the server's key, certificate and chain in one file (the
  reference servers' and asyncio echo's ``--tls-cert``);
- ``server.crt`` and ``server.key``: the leaf certificate and its key apart
  (redis-server, socat, stunnel);
- ``server-chain.crt``: the leaf and its chain, without the key (memcached's
  ``ssl_chain_cert``).

The files that hold the server's key (server.pem, server.key) are readable
by their owner only (0600), the certificates by all (0644); every server here
reads its key before it drops privileges (memcached ``-u nobody`` included).
The CA's own key is never written.

Usage: python tools/tls_certs.py DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trustme

#: The names the server certificate is valid for: every way a test reaches the loopback.
NAMES = ("127.0.0.1", "::1", "localhost")
#: What :func:`write_certs` writes, in order.
FILES = ("ca.pem", "server.pem", "server.crt", "server.key", "server-chain.crt")
_PRIVATE = frozenset({"server.pem", "server.key"})


def write_certs(where: Path) -> dict[str, Path]:
    """Make a CA and a server certificate for :data:`NAMES`, and write :data:`FILES` into ``where``.

    Args:
        where: A directory; it is created if missing, files in it are replaced.

    Returns:
        Each file's name mapped to its path.
    """
    where.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*NAMES)
    paths = {name: where / name for name in FILES}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server.pem"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server.crt"]))
    server.private_key_pem.write_to_path(str(paths["server.key"]))
    paths["server-chain.crt"].write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    for name, path in paths.items():
        path.chmod(0o600 if name in _PRIVATE else 0o644)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="Where to write " + ", ".join(FILES))
    args = parser.parse_args(argv)
    try:
        paths = write_certs(args.dir)
    except OSError as exc:
        print(f"tls_certs.py: cannot write into {args.dir}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(paths)} into {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
