"""The SASL responses of the token mechanisms, sans-IO: OAUTHBEARER and XOAUTH2.

Both carry a user name and a bearer token; this module takes them out of the
client's decoded response and builds the server's error challenge. Checking
the token is the domain's business (:mod:`pop3proxy.oauth`).

* OAUTHBEARER (RFC 7628 section 3.1): a GS2 header (``n,a=alice@acme.example,``),
  then key-value pairs each ended by ``\\x01`` (``auth=Bearer <token>``, and
  ``host=``/``port=``, which are ignored), then a final ``\\x01``.
* XOAUTH2 (Google's and Microsoft's): ``user=alice@acme.example\\x01auth=Bearer
  <token>\\x01\\x01``.

A refused token is answered, per RFC 7628 section 3.2.2, with a challenge
holding a JSON error (built by the domain, which knows the tenant's scopes and
issuer: :func:`pop3proxy.oauth.error_challenge`); the client replies with one
``\\x01`` (``AQ==``) and the server ends the exchange with ``-ERR``
(:meth:`pop3proxy.protocol.client.ClientConnection.login_failed`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN_MECHANISMS = frozenset({"OAUTHBEARER", "XOAUTH2"})
"""The mechanisms that carry a bearer token instead of a password."""

MECHANISMS = ("PLAIN", "OAUTHBEARER", "XOAUTH2")
"""Every mechanism the proxy can offer, in the order CAPA lists them."""

_KV_SEPARATOR = b"\x01"

_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)\Z")
"""RFC 6750 section 2.1: ``Bearer`` and a b64token; the scheme is case-insensitive."""


class MalformedResponse(ValueError):
    """The client's response is not what its mechanism defines; the message
    says what (for the ``-ERR`` line: it never holds the token)."""


@dataclass(slots=True)
class TokenResponse:
    """Who the client says it is, and the token that should prove it."""

    user: bytes
    """The authorization identity: ``a=`` of OAUTHBEARER, ``user=`` of XOAUTH2."""
    token: bytes = field(repr=False)


def parse_oauthbearer(response: bytes) -> TokenResponse:
    """RFC 7628 section 3.1. Channel binding (``p=``) is refused: the proxy
    offers no ``-PLUS`` mechanism. The authzid is required: it names the
    tenant whose issuer must have signed the token."""
    header, separator, rest = response.partition(_KV_SEPARATOR)
    if not separator:
        raise MalformedResponse("expected a GS2 header and key-value pairs")
    parts = header.split(b",")
    if len(parts) != 3 or parts[2] != b"":
        raise MalformedResponse("malformed GS2 header")
    flag, authzid = parts[0], parts[1]
    if flag not in (b"n", b"y"):
        raise MalformedResponse("channel binding is not supported")
    if not authzid.startswith(b"a=") or len(authzid) == 2:
        raise MalformedResponse("the GS2 header must name the user (a=)")
    user = _unescape_saslname(authzid[2:])
    return TokenResponse(user, _bearer(_pairs(rest)))


def parse_xoauth2(response: bytes) -> TokenResponse:
    """``user=<name>\\x01auth=Bearer <token>\\x01\\x01``."""
    pairs = _pairs(response)
    user = pairs.get(b"user")
    if not user:
        raise MalformedResponse("expected user=")
    return TokenResponse(user, _bearer(pairs))


def _pairs(rest: bytes) -> dict[bytes, bytes]:
    """``key=value\\x01...\\x01``: each pair ended by ``\\x01``, then one more."""
    if not rest.endswith(_KV_SEPARATOR):
        raise MalformedResponse("the key-value pairs must end with ^A")
    items = rest[:-1].split(_KV_SEPARATOR)
    if items[-1] != b"":
        raise MalformedResponse("the key-value pairs must end with ^A^A")
    pairs: dict[bytes, bytes] = {}
    for item in items[:-1]:
        key, equals, value = item.partition(b"=")
        if not equals or not key.isalpha() or key in pairs:
            raise MalformedResponse("malformed key-value pair")
        pairs[key] = value
    return pairs


def _bearer(pairs: dict[bytes, bytes]) -> bytes:
    found = _BEARER.match(pairs.get(b"auth", b""))
    if found is None:
        raise MalformedResponse("expected auth=Bearer <token>")
    return found.group(1)


def _unescape_saslname(name: bytes) -> bytes:
    """RFC 5801 section 4: ``=2C`` is a comma, ``=3D`` an equals sign; any
    other ``=`` is an error."""
    if b"=" in name.replace(b"=2C", b"").replace(b"=3D", b""):
        raise MalformedResponse("malformed user name in the GS2 header")
    return name.replace(b"=2C", b",").replace(b"=3D", b"=")
