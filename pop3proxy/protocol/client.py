"""The client side of a proxied POP3 session, sans-IO.

The proxy plays the POP3 server through AUTHORIZATION (RFC 1939 section 4):
it answers CAPA, STLS, USER, PASS, AUTH (PLAIN, and the token mechanisms
OAUTHBEARER and XOAUTH2 when configured: :mod:`pop3proxy.protocol.sasl`),
NOOP and QUIT itself, and asks its shell to log in when it has credentials.
After a successful login the session is in TRANSACTION and every client
command is forwarded to the backend, still parsed (for bounds and counting),
never interpreted.

Theory of operation: the shell feeds bytes with :meth:`ClientConnection.receive_data`
and executes the returned actions in order. :class:`StartTLS` and
:class:`Login` pause the machine: it buffers further input (pipelining, RFC
2449 section 6.6) until the shell reports the outcome with
:meth:`~ClientConnection.tls_established`, :meth:`~ClientConnection.login_succeeded`
or :meth:`~ClientConnection.login_failed`.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from pop3proxy.protocol import replies, sasl
from pop3proxy.protocol.framing import LineReader
from pop3proxy.protocol.replies import Code


@dataclass(slots=True)
class Send:
    """Write these bytes to the client."""

    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Run the TLS handshake as server now, then call ``tls_established``."""


@dataclass(slots=True)
class Login:
    """Authenticate and open the backend session, then report the outcome."""

    user: str
    password: bytes = field(repr=False)
    mechanism: str = "USER"
    token: bytes | None = field(default=None, repr=False)
    """The bearer token of OAUTHBEARER or XOAUTH2 (``password`` is then empty)."""


@dataclass(slots=True)
class Forward:
    """Send one command line (CRLF included) to the backend."""

    data: bytes = field(repr=False)
    """May hold a password: a client can pipeline a second PASS after login."""
    command: str


@dataclass(slots=True)
class Close:
    """Close the connection after the preceding sends; ``reason`` is for logs."""

    reason: str


Action = Send | StartTLS | Login | Forward | Close


class State(Enum):
    """Where the client's side of the session is (RFC 1939 section 3); in the
    ``_PENDING`` states the machine waits for the shell's report."""

    AUTHORIZATION = auto()
    AUTH_CONTINUATION = auto()
    AUTH_ERROR_ACK = auto()
    """A token was refused with an RFC 7628 error challenge: the client's
    next line (``AQ==``, or anything) gets the ``-ERR``."""
    TLS_PENDING = auto()
    LOGIN_PENDING = auto()
    TRANSACTION = auto()
    CLOSED = auto()


_READING_LINES = (
    State.AUTHORIZATION,
    State.AUTH_CONTINUATION,
    State.AUTH_ERROR_ACK,
    State.TRANSACTION,
)
"""The states that take the next line; the others wait for the shell."""


TRANSACTION_COMMANDS = frozenset(
    {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA", "LAST"}
)
"""Commands counted by name in TRANSACTION; anything else is counted as ``other``
so a metric label can never be chosen by a client."""

MAX_AUTH_LINE = 16 * 1024
"""AUTH lines (the command with an initial response, and continuation lines)
may be this long when a token mechanism is on: tokens are often 2-4 KB, and
RFC 5034 section 4 lifts the 255-octet limit for them. Every other line keeps
``max_line``."""

MAX_USER_LENGTH = 255
"""Longer user names are refused; no mail system has them, abusers send them."""

TOO_LONG_SUBSTITUTE = b"X-POP3PROXY-LINE-TOO-LONG\r\n"
"""Sent to the backend in place of an overlong TRANSACTION command: the backend
answers it with -ERR in order, so pipelined replies stay in sequence."""

BAD_LINE_SUBSTITUTE = b"X-POP3PROXY-BAD-LINE\r\n"
"""Sent to the backend in place of a TRANSACTION line holding NUL or a bare CR,
which a lenient backend could split into a command the proxy never saw."""

_has_nul_or_cr = re.compile(b"[\x00\r]").search
"""Finds NUL or CR, which no command line may hold (``pos`` and ``endpos`` as for ``re``)."""


def _command_name(line: bytes) -> str:
    """The name a TRANSACTION line is counted under; ``other`` for anything
    not a command (a metric label is never the client's choice)."""
    name = line.partition(b" ")[0].upper().decode("ascii", "replace")
    return name if name in TRANSACTION_COMMANDS else "other"


SEND_PASS = replies.ok("Send PASS")
LOGGED_IN = replies.ok("Logged in.")
BYE = replies.ok("Bye")


def valid_user_name(name: str) -> bool:
    """Non-empty, bounded, and free of control characters and spaces, which
    would let a name smuggle a second command to the backend. Unicode control
    and format characters (C1 controls such as CSI, bidi overrides, line
    separators) are refused too: the name ends up in logs."""
    return 0 < len(name) <= MAX_USER_LENGTH and name.isprintable() and " " not in name


@dataclass(frozen=True)
class Settings:
    """What a listener tells the machine about its situation."""

    tls_active: bool
    stls_offered: bool
    require_tls: bool = True
    max_line: int = 2048
    max_errors: int = 10
    implementation: str = "pop3proxy"
    greeting: str = "POP3 proxy ready"
    mechanisms: tuple[str, ...] = ("PLAIN",)
    """The SASL mechanisms CAPA lists and AUTH takes (``auth.mechanisms``)."""

    @property
    def authorization_line(self) -> int:
        """The line cap before login: room for a token when a token mechanism
        is on (AUTH lines only: :meth:`ClientConnection._command` holds
        other commands to ``max_line``)."""
        if sasl.TOKEN_MECHANISMS.isdisjoint(self.mechanisms):
            return self.max_line
        return max(self.max_line, MAX_AUTH_LINE)


class ClientConnection:
    """One client connection's POP3 state (RFC 1939, RFC 2449, RFC 2595, RFC 5034)."""

    __slots__ = (
        "_failure_reply",
        "_mechanism",
        "_reader",
        "client_sent_quit",
        "errors",
        "settings",
        "state",
        "tls_active",
        "user",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State.AUTHORIZATION
        self.tls_active = settings.tls_active
        self.user: str | None = None
        self.client_sent_quit = False
        self.errors = 0
        self._mechanism = "PLAIN"
        """The mechanism of the AUTH exchange in progress."""
        self._failure_reply = b""
        """The ``-ERR`` that ends a refused token's exchange (``AUTH_ERROR_ACK``)."""
        self._reader = LineReader(settings.authorization_line)

    # -- inputs from the shell -------------------------------------------

    def greeting(self) -> list[Action]:
        return [Send(replies.ok(self.settings.greeting))]

    def receive_data(self, data: bytes | memoryview) -> list[Action]:
        """Feed bytes from the client (copied: a view may be reused after the call);
        returns what to do, in order."""
        if self.state is State.CLOSED:
            return []
        self._reader.feed(data)
        return self._process()

    def tls_established(self) -> list[Action]:
        """The STLS handshake succeeded: forget everything said in plaintext.

        RFC 2595 section 4: the client must discard what it knew; so must we.
        Bytes that arrived before the handshake could have been injected by a
        man in the middle (the STARTTLS command-injection class), so they are
        dropped, and the USER given in plaintext is forgotten.
        """
        self._reader.discard()
        self.tls_active = True
        self.user = None
        self.state = State.AUTHORIZATION
        return []

    def login_succeeded(self) -> list[Action]:
        self.state = State.TRANSACTION
        self._reader.max_line = self.settings.max_line
        return [Send(LOGGED_IN), *self._process()]

    def login_failed(self, reply: bytes, challenge: bytes | None = None) -> list[Action]:
        """The login was refused; ``reply`` is the complete ``-ERR`` line to send.

        ``challenge`` (a refused token: RFC 7628 section 3.2.2) is sent first
        as ``+ <challenge>``, and ``reply`` only after the client answered it.
        """
        self.user = None
        if challenge is not None:
            self.state = State.AUTH_ERROR_ACK
            self._failure_reply = reply
            return [Send(replies.continuation(challenge)), *self._process()]
        self.state = State.AUTHORIZATION
        return self._error(reply) + self._process()

    # -- line processing -------------------------------------------------

    def _process(self) -> list[Action]:
        actions: list[Action] = []
        while self.state in _READING_LINES:
            line = self._reader.next_line()
            if line is None:
                break
            if self.state is State.TRANSACTION:
                forward = self._relay(line)
                if forward is not None:
                    actions.append(forward)
            elif self.state is State.AUTH_ERROR_ACK:
                # Whatever the client answers (AQ==, "*", too long): the end.
                self.state = State.AUTHORIZATION
                actions += self._error(self._failure_reply)
            elif not isinstance(line, bytes):  # LINE_TOO_LONG
                if self.state is State.AUTH_CONTINUATION:
                    # The SASL exchange ends here; the next line is a command.
                    self.state = State.AUTHORIZATION
                actions += self._error(replies.err("Line too long"))
            elif self.state is State.AUTH_CONTINUATION:
                actions += self._auth_response(line)
            else:
                actions += self._command(line)
        return actions

    def relay_data(self, data: bytes | memoryview, commands: dict[str, int]) -> bytes:
        """In TRANSACTION: the bytes to forward for ``data``, each command counted
        by name in ``commands``; the :class:`Forward` actions of
        :meth:`receive_data`, joined."""
        # The fast path for TRANSACTION data: a read holding one whole command
        # line goes on as it came, without the line buffer or an action object.
        # Without it a full session takes 8 % more instructions (bench/instructions.py).
        line = None if self.client_sent_quit else self._reader.whole_line(data)
        if line is not None and not _has_nul_or_cr(line, 0, len(line) - 2):
            command = self._relayed_command(line[:-2])
            commands[command] = commands.get(command, 0) + 1
            return line
        forward = b""
        for action in self.receive_data(data):
            assert isinstance(action, Forward)  # all TRANSACTION asks for
            forward += action.data
            commands[action.command] = commands.get(action.command, 0) + 1
        return forward

    def _command(self, line: bytes) -> list[Action]:
        keyword, _, argument = line.partition(b" ")
        name = keyword.decode("ascii", "replace").upper()
        if len(line) + 2 > self.settings.max_line and name != "AUTH":
            return self._error(replies.err("Line too long"))
        if _has_nul_or_cr(line):
            return self._error(replies.err("NUL and CR are not allowed in a command"))
        handler = _AUTHORIZATION_COMMANDS.get(name)
        if handler is not None:
            return handler(self, argument)
        if name in TRANSACTION_COMMANDS:
            return self._error(replies.err(f"{name} is not allowed before login"))
        return self._error(replies.err("Unknown command"))

    def _relay(self, line: bytes | object) -> Forward | None:
        """A TRANSACTION line on its way to the backend; ``None`` after QUIT
        (the backend is closing: nothing more goes to it)."""
        if self.client_sent_quit:
            return None
        if not isinstance(line, bytes):  # LINE_TOO_LONG
            return Forward(TOO_LONG_SUBSTITUTE, "other")
        if _has_nul_or_cr(line):
            return Forward(BAD_LINE_SUBSTITUTE, "other")
        return Forward(line + replies.CRLF, self._relayed_command(line))

    def _relayed_command(self, line: bytes) -> str:
        """The name ``line`` is counted under; after QUIT nothing more goes to
        the backend, which is closing."""
        command = _command_name(line)
        if command == "QUIT":
            self.client_sent_quit = True
        return command

    def _error(self, reply: bytes) -> list[Action]:
        """Send an -ERR and count it; past the budget, say goodbye."""
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self.state = State.CLOSED
            return [
                Send(reply),
                Send(replies.err("Too many errors, closing connection")),
                Close("too_many_errors"),
            ]
        return [Send(reply)]

    def _auth_allowed(self) -> bool:
        return self.tls_active or not self.settings.require_tls

    def _tls_required(self) -> list[Action]:
        return self._error(replies.err("Plaintext authentication is disabled: use STLS first"))

    # -- commands ----------------------------------------------------------

    def capabilities(self) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self._auth_allowed():
            caps += [b"USER", b" ".join([b"SASL", *(m.encode() for m in self.settings.mechanisms)])]
        if self.settings.stls_offered and not self.tls_active:
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION " + self.settings.implementation.encode())
        return caps

    def _cmd_capa(self, argument: bytes) -> list[Action]:
        return [Send(replies.multiline(replies.ok("Capability list follows"), self.capabilities()))]

    def _cmd_stls(self, argument: bytes) -> list[Action]:
        if self.tls_active:
            return self._error(replies.err("Already using TLS"))
        if not self.settings.stls_offered:
            return self._error(replies.err("STLS is not available here"))
        self.state = State.TLS_PENDING
        self._reader.discard()
        return [Send(replies.ok("Begin TLS negotiation")), StartTLS()]

    def _cmd_user(self, argument: bytes) -> list[Action]:
        if not self._auth_allowed():
            return self._tls_required()
        try:
            # Spaces only: str.strip() would also take a vertical tab, a NEL or
            # a LINE SEPARATOR off the ends, and a name with one is refused.
            name = argument.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            return self._error(replies.err("User name must be UTF-8"))
        if not valid_user_name(name):
            return self._error(replies.err("USER needs a name"))
        self.user = name
        return [Send(SEND_PASS)]

    def _cmd_pass(self, argument: bytes) -> list[Action]:
        if not self._auth_allowed():
            return self._tls_required()
        if self.user is None:
            return self._error(replies.err("Send USER first"))
        if not argument:
            return self._error(replies.err("PASS needs a password"))
        return self._start_login(self.user, argument, "USER")

    def _cmd_auth(self, argument: bytes) -> list[Action]:
        if not self._auth_allowed():
            return self._tls_required()
        offered = self.settings.mechanisms
        mechanism, _, initial = argument.strip().partition(b" ")
        if not mechanism:
            listed = [name.encode() for name in offered]
            return [Send(replies.multiline(replies.ok("Mechanisms follow"), listed))]
        name = mechanism.upper().decode("ascii", "replace")
        if name not in offered:
            return self._error(replies.err("Unsupported mechanism; use " + " or ".join(offered)))
        self._mechanism = name
        if not initial:
            self.state = State.AUTH_CONTINUATION
            return [Send(replies.continuation())]
        return self._sasl_response(initial.strip())

    def _auth_response(self, line: bytes) -> list[Action]:
        self.state = State.AUTHORIZATION
        if line == b"*":
            return self._error(replies.err("Authentication cancelled"))
        return self._sasl_response(line)

    def _sasl_response(self, response: bytes) -> list[Action]:
        if self._mechanism == "PLAIN":
            return self._plain_response(response)
        return self._token_response(response)

    def _token_response(self, response: bytes) -> list[Action]:
        """OAUTHBEARER or XOAUTH2: a user name and a bearer token, for the
        domain to check (:mod:`pop3proxy.protocol.sasl`)."""
        mechanism = self._mechanism
        try:
            decoded = binascii.a2b_base64(response, strict_mode=True)
        except binascii.Error:
            return self._error(replies.err(f"Invalid base64 in AUTH {mechanism} response"))
        parse = sasl.parse_oauthbearer if mechanism == "OAUTHBEARER" else sasl.parse_xoauth2
        try:
            said = parse(decoded)
        except sasl.MalformedResponse as malformed:
            return self._error(
                replies.err(f"Malformed AUTH {mechanism} response: {malformed}", Code.AUTH)
            )
        try:
            user = said.user.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(replies.err("User name must be UTF-8", Code.AUTH))
        if not valid_user_name(user):
            return self._error(replies.err(f"Malformed AUTH {mechanism} response", Code.AUTH))
        self.state = State.LOGIN_PENDING
        return [Login(user, b"", mechanism, said.token)]

    def _plain_response(self, response: bytes) -> list[Action]:
        """RFC 4616: base64 of ``authzid NUL authcid NUL passwd``; "=" is empty."""
        try:
            decoded = b"" if response == b"=" else binascii.a2b_base64(response, strict_mode=True)
        except binascii.Error:
            return self._error(replies.err("Invalid base64 in AUTH PLAIN response"))
        parts = decoded.split(b"\x00")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return self._error(replies.err("Malformed AUTH PLAIN response", Code.AUTH))
        authzid, authcid, password = parts
        try:
            user = authcid.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(replies.err("User name must be UTF-8", Code.AUTH))
        if authzid and authzid != authcid:
            return self._error(replies.err("Authorization identity not permitted", Code.AUTH))
        if not valid_user_name(user) or b"\r" in password or b"\n" in password:
            return self._error(replies.err("Malformed AUTH PLAIN response", Code.AUTH))
        return self._start_login(user, password, "PLAIN")

    def _start_login(self, user: str, password: bytes, mechanism: str) -> list[Action]:
        self.state = State.LOGIN_PENDING
        return [Login(user, password, mechanism)]

    def _cmd_apop(self, argument: bytes) -> list[Action]:
        return self._error(
            replies.err("APOP is not supported by this proxy; use USER/PASS or AUTH PLAIN")
        )

    def _cmd_noop(self, argument: bytes) -> list[Action]:
        return [Send(replies.ok())]

    def _cmd_quit(self, argument: bytes) -> list[Action]:
        self.state = State.CLOSED
        self.client_sent_quit = True
        return [Send(BYE), Close("quit")]


_AUTHORIZATION_COMMANDS: dict[str, Callable[[ClientConnection, bytes], list[Action]]] = {
    "CAPA": ClientConnection._cmd_capa,
    "STLS": ClientConnection._cmd_stls,
    "USER": ClientConnection._cmd_user,
    "PASS": ClientConnection._cmd_pass,
    "AUTH": ClientConnection._cmd_auth,
    "APOP": ClientConnection._cmd_apop,
    "NOOP": ClientConnection._cmd_noop,
    "QUIT": ClientConnection._cmd_quit,
}
"""The commands the proxy answers itself in AUTHORIZATION, by name. A
TRANSACTION command is refused until login; anything else is unknown."""
