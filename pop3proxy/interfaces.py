"""What the gevent shell (:mod:`pop3proxy.net`) and the domain say to each other.

The shell owns sockets, TLS and the event loop; the domain (directory,
limits, login, routing, backends) owns tenants, budgets and backend choice.
Neither imports the other: both import this module, and the composition
root (:mod:`pop3proxy.app`) hands each the other's implementation.

Two ports, one each way:

* :class:`Logins`, the domain as the shell sees it: admit a connection, log
  a user in (which ends in a :class:`LoggedIn` or a :class:`LoginFailed`),
  give slots back. Implemented by :class:`pop3proxy.login.LoginService`.
* :class:`BackendDialer`, the shell as the domain sees it: connect to one
  backend and run the login machine on it. Implemented by
  :class:`pop3proxy.net.backend.Dialer`.

Only value types, exceptions and typing protocols live here (stdlib and the
sans-IO core): nothing that does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pop3proxy.protocol.backend import BackendLogin

Address = tuple[str, int]
"""A host (address or name) and a port."""


class _Bound(Protocol):
    def getsockname(self) -> Any: ...


# Made for every login: a slotted record, not a frozen one (which sets each
# field through object.__setattr__). Not changed after it is made.
@dataclass(slots=True)
class ClientAddress:
    """Who the client is (``source``) and what it connected to (``destination``).

    Behind a load balancer speaking PROXY protocol, both come from its header.
    Otherwise the destination is asked of the client's ``connection`` only when
    a PROXY header to the backend needs it: most logins never do, and the
    question is a system call.
    """

    source: Address
    destination: Address | None = None
    connection: _Bound | None = field(default=None, compare=False, repr=False)

    def connected_to(self) -> Address | None:
        if self.destination is not None or self.connection is None:
            return self.destination
        try:
            return self.connection.getsockname()[:2]
        except OSError:
            return None


# -- the domain asks the shell: one backend connection ------------------------


class BackendTarget(Protocol):
    """Where and how to reach one backend: plain values (a tenant record's
    backend entry has them all; the dialer never sees the tenant)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6): for logs, metrics and health."""

    @property
    def tls(self) -> str:
        """``none``, ``implicit`` or ``starttls``."""

    @property
    def verify(self) -> bool: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def server_name(self) -> str | None:
        """The name to send and verify over TLS, when not ``host``."""

    @property
    def forward_client(self) -> str:
        """``none``, ``xclient``, ``proxy_v1`` or ``proxy_v2``."""


class BackendConnection(Protocol):
    """A backend connection the shell opened and logged in. The domain only
    holds it to close it (without a word: the backend never enters UPDATE)."""

    @property
    def address(self) -> str: ...
    @property
    def leftover(self) -> bytes:
        """Bytes the backend sent after its login reply (none from a sane server)."""

    def close(self) -> None: ...


class LoginRefused(Exception):
    """The backend judged the credentials; ``reply`` is the -ERR line for the client."""

    def __init__(self, reply: bytes, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class BackendUnavailable(Exception):
    """No backend of the tenant could be used; the client gets -ERR [SYS/TEMP]."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BackendDialer(Protocol):
    def dial(
        self,
        backend: BackendTarget,
        timeout: float,
        login: BackendLogin | None,
        client: ClientAddress | None,
    ) -> BackendConnection:
        """Connect to ``backend`` and run ``login`` on it, waiting in the calling
        greenlet; ``login=None`` is an active check (the greeting only).
        ``timeout`` bounds the connect, and then the login exchange.

        Raises :class:`LoginRefused` when the backend refused the credentials,
        :class:`BackendUnavailable` for anything else that went wrong.
        """
        ...


# -- the shell asks the domain: admission and login ---------------------------

Lease = Any
"""Slots a session holds (its connection from an address; after the login,
its sessions per tenant and per user). Opaque to the shell, which only hands
it back to :meth:`Logins.release`."""


@dataclass(slots=True)
class LoggedIn:
    """What a finished login hands the shell: a backend ready to relay, and who for."""

    backend: BackendConnection
    tenant: str
    """The tenant's name: for logs and the metrics' tenant label."""
    user: str
    """Who logged in, canonical (``alice@acme.example`` however it was typed)."""
    lease: Lease = None
    """The session slots taken for this login: given back when the relay ends."""
    log_user: str | None = None
    """``user`` as the logs show it (``logging.user``): the name, a digest, or none."""
    mechanism: str = "password"
    """What the client proved itself with: ``password``, ``app_password`` or ``oauth``."""
    credential: str | None = None
    """Which withdrawable credential it used (an app password's id), so that
    withdrawing it can end the sessions it opened; ``None`` for a password."""
    credential_label: str | None = None
    """That credential's name for people (an app password's label), for the logs."""
    meter: DownloadMeter | None = None
    """Counts what the session sends its client, when a download budget applies."""
    uidl_map: Mapping[bytes, bytes] | None = None
    """The user's moved mailbox: the backend's UIDL to the one clients know.
    ``None`` (most users) leaves every reply as the backend sent it."""


class DownloadMeter(Protocol):
    """One session's share of its user's daily download budget.

    The relay adds each chunk it sends the client (an in-memory sum: the
    domain adds it up in Redis in batches, off the session's path) and reads
    :attr:`exhausted` before it forwards a RETR or TOP.
    """

    @property
    def exhausted(self) -> bool:
        """The user's budget is used up, counted across every replica."""

    def add(self, octets: int) -> None: ...


class LoginFailed(Exception):
    """``reply`` goes to the client; ``result`` and ``tenant`` to logs and metrics."""

    def __init__(self, reply: bytes, result: str, tenant: str | None = None, detail: str = ""):
        super().__init__(result)
        self.reply = reply
        self.result = result
        self.tenant = tenant
        self.detail = detail
        self.user: str | None = None
        """Who tried, canonical once the tenant was known (the domain's own use)."""
        self.log_user: str | None = None
        """``user`` as the logs show it (``logging.user``), or none."""
        self.challenge: bytes | None = None
        """A refused token: the RFC 7628 error challenge sent before ``reply``."""


class Logins(Protocol):
    """The domain as a client session sees it."""

    def admit(self, session_id: str, address: str | None) -> Lease | None:
        """A connection slot for ``address``; ``None`` when it has too many open.
        May wait on Redis: called from a greenlet when the limit is on."""
        ...

    def login(
        self,
        user: str,
        password: bytes,
        *,
        sni: str | None = None,
        client: ClientAddress | None = None,
        session_id: str = "",
        listener: str | None = None,
        mechanism: str = "USER",
        token: bytes | None = None,
    ) -> LoggedIn:
        """Log ``user`` in (from a greenlet); raises :class:`LoginFailed`.
        ``listener`` and ``mechanism`` (``USER``, ``PLAIN``, ``OAUTHBEARER``
        or ``XOAUTH2``) go to the user's login history. ``token``: the bearer
        token of a token mechanism, checked instead of ``password``."""
        ...

    def release(self, lease: Lease | None, then: Callable[[], None] | None = None) -> None:
        """Give ``lease``'s slots back, then run ``then``; never waits (the loop calls it)."""
        ...

    def abandon(self, login: LoggedIn) -> None:
        """Give back what a login took, for a session nobody will use."""
        ...
