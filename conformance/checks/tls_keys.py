"""The TLS check of keys updated mid-stream: a KeyUpdate that asks the server for one too.

How this works
--------------
RFC 8446 §4.6.3: a KeyUpdate with ``update_requested`` obliges its receiver
to send a KeyUpdate of its own before its next application data, and to
encrypt from then on with new keys. In a non-blocking server that is a read
that must write: the server's TLS library makes the answer while it reads,
and a loop that sends only what its own writes produce (or drops what a read
produced) sends the next echo under keys the client never learned of. The
client sees records that do not decrypt.

The check echoes a little, sends the KeyUpdate (the stream reaches libssl
for it, :mod:`conformance.key_update`; where this Python cannot, the check is
not measured), then echoes 256 KiB: every byte must come back, decrypted.
"""

from __future__ import annotations

from conformance.checks.base import KIB, Check, Level
from conformance.checks.tls import TLS_CATEGORY, needs_tls
from conformance.harness import Event, Harness
from conformance.streams import TlsStream

__all__ = ["KEY_CHECKS"]

RFC8446_KEY_UPDATE = "RFC 8446 §4.6.3 (key and initialization vector update)"


async def key_update_mid_stream(h: Harness) -> None:
    conn = await h.connect("c1")
    stream = conn.stream
    assert isinstance(stream, TlsStream), "only over TLS (needs_tls)"
    if stream.version != "TLSv1.3":
        h.not_measured(f"KeyUpdate is TLS 1.3's (RFC 8446 §4.6.3); c1 speaks {stream.version}")
        return
    await conn.exchange(h.payload(4 * KIB, 61))
    await stream.update_keys()
    conn.transcript.events.append(Event(h.elapsed(), "KeyUpdate (update_requested)"))
    await conn.exchange(h.payload(256 * KIB, 62))
    conn.conclude()


KEY_CHECKS: tuple[Check, ...] = (
    Check("TLS-KEYUPDATE-1", "After the client's KeyUpdate asking for one too, the server "
          "answers with its own and every byte still comes back (a read that must write)",
          TLS_CATEGORY, Level.MUST, RFC8446_KEY_UPDATE, needs_tls(key_update_mid_stream),
          timeout=15.0, any_bytes=False),
)  # fmt: skip
