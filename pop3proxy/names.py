"""Host names as clients and records spell them: pure helpers, no I/O.

Shared by the TLS shell (which certificate a server name gets), the login
(which tenant a server name picks) and the tenant records (what a tenant may
be called), so that all three agree on what a name is.
"""

from __future__ import annotations

import re
from collections.abc import Container

_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


def valid_host_name(name: str) -> bool:
    """A DNS-like name: letters, digits, ``.``, ``-`` and ``_``, at most 253
    characters, starting and ending with a letter or digit."""
    return bool(_HOST_NAME.match(name))


def usable_server_name(server_name: str | None) -> str | None:
    """A client's SNI name, lowercased, if it is a host name at all.

    OpenSSL passes on any bytes but NUL, and Python any ASCII: a name with a
    space or a control character would become a cache key, a Redis key and,
    with ``tenancy.sni_tenant``, a tenant. Such a name is treated as no name.
    """
    if not server_name:
        return None
    name = server_name.lower().rstrip(".")
    return name if valid_host_name(name) else None


def match_name(names: Container[str], server_name: str) -> str | None:
    """The entry for ``server_name``: exact, else a ``*.`` wildcard for its first label."""
    name = server_name.lower().rstrip(".")
    if name in names:
        return name
    _, dot, parent = name.partition(".")
    wildcard = "*." + parent
    return wildcard if dot and wildcard in names else None
