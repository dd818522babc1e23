"""UIDL continuity for a moved mailbox, sans-IO.

A client that leaves mail on the server remembers each message by its UIDL
(RFC 1939 section 7). When a mailbox moves to a server that gives the same
messages other UIDLs, the proxy answers with the old ones, from the user's
map (new UIDL -> old UIDL), so that no client downloads everything again.
A UIDL not in the map is new mail and stays as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_valid_uidl = re.compile(rb"[\x21-\x7e]{1,70}").fullmatch
"""RFC 1939 section 7: 1 to 70 characters in 0x21-0x7E. A map value outside
that (a damaged map) is not used: it could break the reply's framing."""


class UidlRewriter:
    """Rewrites the UIDL in one line of a UIDL reply: ``1 new`` -> ``1 old``
    (a listing's line) or ``+OK 1 new`` -> ``+OK 1 old`` (``UIDL 1``)."""

    __slots__ = ("_old_by_new", "translated")

    def __init__(self, old_by_new: Mapping[bytes, bytes]) -> None:
        self._old_by_new = old_by_new
        self.translated = 0
        """UIDLs rewritten so far."""

    def __call__(self, line: bytes) -> bytes:
        head, space, uidl = line.rpartition(b" ")
        if not space:
            return line
        old = self._old_by_new.get(uidl)
        if old is None or not _valid_uidl(old):
            return line
        self.translated += 1
        return head + space + old
