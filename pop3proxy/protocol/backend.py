"""The backend login, sans-IO: greeting, optional STLS, optional XCLIENT, then
USER and PASS, or AUTH PLAIN.

The proxy logs in to the upstream server with the rewritten user name and
the client's password (passthrough). Each step waits for the previous reply:
legacy servers do not all support pipelining (RFC 2449 section 6.6 makes it
optional), and a server that refuses STLS must never see the password.

XCLIENT (``forward_client: xclient``) tells the backend the client's address
and port before the login, as Dovecot's pop3-login accepts it from
``login_trusted_networks``. Dovecot announces it in the greeting's response
code (``+OK [XCLIENT] Dovecot ready.``, only to trusted peers) and not in
CAPA; other servers may list it in CAPA instead, so without the greeting
code the machine asks CAPA once. A backend that offers neither, or refuses
the command, gets the login anyway (the client's address is lost, not the
session); ``xclient_result`` says which for the log. Every XCLIENT value is
sent as xtext (RFC 3461 section 4, as nginx does): whatever a value holds,
it cannot end the line or start another attribute.

Nothing goes into a line raw that could end it: a login name or password
holding CR, LF or NUL (or, for USER, a space or another control character)
fails the login before anything is sent (``unsafe_credentials``). The
client side refuses such names and passwords already; this is the last
check before the wire, for whatever a template or a secret file made of
them.

With ``sasl_plain`` (a backend's ``login_command: auth_plain``) the
credentials go in one ``AUTH PLAIN`` command with the initial response
(RFC 5034): one round trip where USER and PASS take two, a loop wake-up and
a few milliseconds less per login. A command that would pass the 255
octets of RFC 2449 goes without it, and the response follows the server's
empty challenge (``+``).

The shell feeds one status line at a time (``receive_line``) and executes
the returned actions. The outcome is :class:`LoggedIn` or :class:`Failed`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from pop3proxy.protocol import proxyproto, replies
from pop3proxy.protocol.replies import Code

MAX_STATUS_LINE = 8192
"""RFC 2449 section 4 allows 512 octets for a status line; old servers exceed
it, nothing legitimate comes close to this cap."""


@dataclass(slots=True)  # not frozen: see the actions of protocol.client
class SendToBackend:
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class StartBackendTLS:
    """Wrap the backend socket in TLS (as client) now, then call ``tls_established``."""


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login; the session is in TRANSACTION."""


class FailureKind(Enum):
    AUTH = auto()
    """The backend refused the credentials."""
    UNAVAILABLE = auto()
    """The backend is not usable: bad greeting, no STLS, garbage. Try another."""


@dataclass(slots=True)
class Failed:
    kind: FailureKind
    reason: str
    """A short snake_case label for logs and metrics; never holds a secret."""
    client_reply: bytes
    """The complete -ERR line the client gets."""


BackendAction = SendToBackend | StartBackendTLS | LoggedIn | Failed


class _Step(Enum):
    """What the login waits for: the reply to which command (Dovecot's proxy
    names them banner, starttls, xclient, login1 and login2)."""

    GREETING = auto()
    STLS = auto()
    TLS_PENDING = auto()
    CAPA = auto()
    CAPA_BODY = auto()
    XCLIENT = auto()
    USER = auto()
    PASS = auto()
    AUTH = auto()
    DONE = auto()


def xtext(value: str) -> bytes:
    """RFC 3461 section 4: every octet outside ``!``..``~``, and ``+`` and
    ``=``, becomes ``+`` and two upper-case hex digits."""
    encoded = bytearray()
    for octet in value.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in _XTEXT_SPECIALS:
            encoded.append(octet)
        else:
            encoded += b"+%02X" % octet
    return bytes(encoded)


_XTEXT_SPECIALS = frozenset(b"+=")
_LINE_BREAKERS = re.compile(b"[\x00\r\n]").search


def _unsafe_credentials(user: bytes, password: bytes, sasl_plain: bool) -> bool:
    """Would writing these credentials end or split a command line?

    With AUTH PLAIN both are inside base64, but NUL separates the fields of
    the decoded response (RFC 4616), and a backend decodes CR and LF back
    into its own buffers. With USER, the name is a single argument: no
    spaces, no control characters at all.
    """
    if not user or _LINE_BREAKERS(password) or _LINE_BREAKERS(user):
        return True
    if sasl_plain:
        return False
    return b" " in user or not user.decode("utf-8").isprintable()


MAX_COMMAND_LINE = 255
"""Octets of a command line, CRLF included (RFC 2449 section 4)."""

TEMPORARY_FAILURE = replies.err("Service temporarily unavailable, try again later", Code.SYS_TEMP)
AUTH_FAILURE = replies.err("Authentication failed", Code.AUTH)

_PASSED_THROUGH_CODES = {
    "IN-USE": replies.err("Mailbox is in use by another session", Code.IN_USE),
    "LOGIN-DELAY": replies.err("Logged in too recently, try again later", Code.LOGIN_DELAY),
    "SYS/TEMP": TEMPORARY_FAILURE,
}
"""Backend response codes worth telling the client (RFC 3206). Everything
else becomes a plain [AUTH] failure: the backend's own words may say whether
the user exists, which the proxy never reveals."""


class BackendLogin:
    """Drives one login to a backend POP3 server."""

    def __init__(
        self,
        login_name: str,
        password: bytes,
        *,
        starttls: bool,
        xclient: tuple[str, int] | None = None,
        sasl_plain: bool = False,
        xoauth2: bool = False,
    ) -> None:
        """``xoauth2``: ``password`` is a client's bearer token, passed on with
        AUTH XOAUTH2 to a backend that checks tokens itself."""
        self._user = login_name.encode("utf-8")
        self._password = password
        self._starttls = starttls
        self._mechanism = b"XOAUTH2" if xoauth2 else b"PLAIN" if sasl_plain else None
        self._sasl_plain = sasl_plain or xoauth2
        self._response_sent = False
        self._token_error_expected = False
        """XOAUTH2 sent after the challenge (step PASS): a refused token gets
        one error challenge before its -ERR. (Sent at once, step AUTH, any
        challenge is answered.)"""
        if xclient is not None:
            xclient = (str(proxyproto.address_to_forward(xclient[0])), xclient[1])
        self._xclient = xclient
        self._xclient_offered = False
        self._step = _Step.GREETING
        self.xclient_result: str | None = None
        """``sent``, ``not_offered`` or ``refused`` when XCLIENT was asked for."""

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    def receive_line(self, line: bytes) -> list[BackendAction]:
        """Feed one status line from the backend, without its CRLF."""
        step = self._step
        if step is _Step.CAPA_BODY:
            return self._capability(line)
        if (line == b"+" or line.startswith(b"+ ")) and (
            step is _Step.AUTH or (step is _Step.PASS and self._token_error_expected)
        ):
            return self._answer_challenge()
        on_reply = _ON_REPLY.get(step)
        if on_reply is None:  # waiting for TLS, or done: the backend has nothing to say
            return self._unavailable("unexpected_data")
        positive = line.startswith(b"+OK")
        if not positive and not line.startswith(b"-ERR"):
            return self._unavailable("garbage")
        return on_reply(self, positive, line)

    def _on_greeting(self, positive: bool, line: bytes) -> list[BackendAction]:
        if not positive:
            return self._unavailable("bad_greeting")
        self._xclient_offered = replies.response_code(line) == "XCLIENT"
        if self._starttls:
            self._step = _Step.STLS
            return [SendToBackend(b"STLS\r\n")]
        return self._before_user()

    def _on_stls(self, positive: bool, line: bytes) -> list[BackendAction]:
        if not positive:
            return self._unavailable("stls_refused")
        self._step = _Step.TLS_PENDING
        return [StartBackendTLS()]

    def _on_capa(self, positive: bool, line: bytes) -> list[BackendAction]:
        if not positive:
            self.xclient_result = "not_offered"
            return self._send_user()
        self._step = _Step.CAPA_BODY
        return []

    def _on_xclient(self, positive: bool, line: bytes) -> list[BackendAction]:
        self.xclient_result = "sent" if positive else "refused"
        return self._send_user()

    def _on_user(self, positive: bool, line: bytes) -> list[BackendAction]:
        if not positive:
            return self._auth_failed(line)
        self._step = _Step.PASS
        return [SendToBackend(b"PASS " + self._password + replies.CRLF)]

    def _on_login(self, positive: bool, line: bytes) -> list[BackendAction]:
        """The reply to PASS, or to AUTH PLAIN's response."""
        if not positive:
            return self._auth_failed(line)
        self._step = _Step.DONE
        return [LoggedIn()]

    def tls_established(self) -> list[BackendAction]:
        """After STLS: XCLIENT if asked for, then USER."""
        return self._before_user()

    def _before_user(self) -> list[BackendAction]:
        if self._xclient is None:
            return self._send_user()
        if self._xclient_offered:
            return self._send_xclient()
        self._step = _Step.CAPA
        return [SendToBackend(b"CAPA\r\n")]

    def _capability(self, line: bytes) -> list[BackendAction]:
        """One line of the CAPA body; at its end, XCLIENT if it was listed."""
        if line != b".":
            if line.split(b" ", 1)[0].upper() == b"XCLIENT":
                self._xclient_offered = True
            return []
        if self._xclient_offered:
            return self._send_xclient()
        self.xclient_result = "not_offered"
        return self._send_user()

    def _send_xclient(self) -> list[BackendAction]:
        assert self._xclient is not None
        host, port = self._xclient
        self._step = _Step.XCLIENT
        command = b"XCLIENT ADDR=" + xtext(host) + b" PORT=" + xtext(str(port)) + replies.CRLF
        return [SendToBackend(command)]

    def _send_user(self) -> list[BackendAction]:
        """The credentials: USER (then PASS), or AUTH PLAIN."""
        if _unsafe_credentials(self._user, self._password, self._sasl_plain):
            self._step = _Step.DONE
            return [Failed(FailureKind.AUTH, "unsafe_credentials", AUTH_FAILURE)]
        if self._mechanism is not None:
            self._step = _Step.AUTH
            command = b"AUTH " + self._mechanism + b" " + self._sasl_response() + replies.CRLF
            self._response_sent = len(command) <= MAX_COMMAND_LINE
            if not self._response_sent:
                # the response follows the challenge
                command = b"AUTH " + self._mechanism + replies.CRLF
            return [SendToBackend(command)]
        self._step = _Step.USER
        return [SendToBackend(b"USER " + self._user + replies.CRLF)]

    def _sasl_response(self) -> bytes:
        """PLAIN (RFC 4616): no authorization identity, then the login name and
        the password. XOAUTH2: the user and the bearer token."""
        if self._mechanism == b"XOAUTH2":
            response = b"user=" + self._user + b"\x01auth=Bearer " + self._password + b"\x01\x01"
            return base64.b64encode(response)
        return base64.b64encode(b"\0" + self._user + b"\0" + self._password)

    def _answer_challenge(self) -> list[BackendAction]:
        """The server's empty challenge to AUTH sent without the response; or,
        once the response went, a refused token's error challenge (RFC 7628
        section 3.2.2), answered with an empty response so the -ERR follows."""
        self._step = _Step.PASS
        token = self._mechanism == b"XOAUTH2"
        if token and self._response_sent:
            self._token_error_expected = False
            return [SendToBackend(replies.CRLF)]
        self._response_sent = True
        self._token_error_expected = token
        return [SendToBackend(self._sasl_response() + replies.CRLF)]

    def _unavailable(self, reason: str) -> list[BackendAction]:
        self._step = _Step.DONE
        return [Failed(FailureKind.UNAVAILABLE, reason, TEMPORARY_FAILURE)]

    def _auth_failed(self, line: bytes) -> list[BackendAction]:
        self._step = _Step.DONE
        code = replies.response_code(line)
        reply = _PASSED_THROUGH_CODES.get(code or "", AUTH_FAILURE)
        kind = FailureKind.UNAVAILABLE if reply is TEMPORARY_FAILURE else FailureKind.AUTH
        reason = "backend_temporary_failure" if kind is FailureKind.UNAVAILABLE else "login_refused"
        return [Failed(kind, reason, reply)]


_ON_REPLY: dict[_Step, Callable[[BackendLogin, bool, bytes], list[BackendAction]]] = {
    _Step.GREETING: BackendLogin._on_greeting,
    _Step.STLS: BackendLogin._on_stls,
    _Step.CAPA: BackendLogin._on_capa,
    _Step.XCLIENT: BackendLogin._on_xclient,
    _Step.USER: BackendLogin._on_user,
    _Step.PASS: BackendLogin._on_login,
    _Step.AUTH: BackendLogin._on_login,
}
"""What a +OK or -ERR means in each step that waits for one."""
