"""The tracked relay, in this process, between a real client socket and a real Dovecot.

A session with a download meter or a UIDL map runs :class:`TrackedRelay`:
these tests drive it as the session does (the logged-in backend socket, the
protocol core, a meter and a map built by hand) and check the bytes the
client gets against what Dovecot itself answers.
"""

from __future__ import annotations

import dataclasses
import fcntl
import poplib
import socket
import struct
import termios
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import gevent
import gevent.event
import gevent.socket
import pytest
from harness.dovecot import Dovecot
from harness.mailbox import crlf
from harness.ports import LOOPBACK
from harness.users import USERS

from pop3proxy.config import parse_config
from pop3proxy.interfaces import LoggedIn
from pop3proxy.net.backend import Dialer
from pop3proxy.net.endpoint import Endpoint
from pop3proxy.net.relay import BUDGET_SPENT, Relay, TrackedRelay, Traffic
from pop3proxy.net.session import ClientSession, Services
from pop3proxy.protocol.backend import BackendLogin
from pop3proxy.protocol.client import ClientConnection, Settings

USER = "dave"

SMALL = b"From: a@example.org\nSubject: small %d\n\nshort body %d\n.\n..dotted\n"
BIG = b"From: a@example.org\nSubject: big\n\n" + b"".join(
    b"line %07d .with some text to make it long enough to matter\n" % n for n in range(160_000)
)
"""About 9 MB: more than the socket buffers between Dovecot, the relay and a
client that reads slowly, so the relay is still sending it when the client
sends its next command."""


class Meter:
    """A download budget of its own: exhausted once ``budget`` octets went out."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.added = 0

    @property
    def exhausted(self) -> bool:
        return self.added >= self.budget

    def add(self, octets: int) -> None:
        self.added += octets


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, "Dovecot closed the connection"
        line += chunk
    return line


def dovecot_login(dovecot: Dovecot, user: str) -> socket.socket:
    """A logged-in TRANSACTION connection to Dovecot, as the backend login leaves it."""
    sock = socket.create_connection((dovecot.host, dovecot.port), timeout=10)
    assert read_line(sock).startswith(b"+OK")
    sock.sendall(b"USER %s\r\nPASS %s\r\n" % (user.encode(), USERS[user].encode()))
    assert read_line(sock).startswith(b"+OK")
    assert read_line(sock).startswith(b"+OK"), "Dovecot refused the login"
    return sock


def direct(dovecot: Dovecot, user: str, commands: list[bytes]) -> list[bytes]:
    """Dovecot's own reply to each command (a multi-line one whole), then QUIT;
    returns once Dovecot logged the session's end, so later log marks miss it."""
    mark = dovecot.log_mark()
    sock = dovecot_login(dovecot, user)
    answers = []
    for command in commands:
        sock.sendall(command)
        reply = read_line(sock)
        multiline = command.strip() in (b"UIDL", b"LIST") or command.startswith(b"RETR")
        while reply.startswith(b"+OK") and multiline and not reply.endswith(b"\r\n.\r\n"):
            reply += read_line(sock)
        answers.append(reply)
    sock.sendall(b"QUIT\r\n")
    read_line(sock)
    sock.close()
    dovecot.wait_for_log(rf"pop3\({user}\).*Logged out", since=mark)
    return answers


def logged_in() -> ClientConnection:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False))
    conn.receive_data(b"USER dave\r\nPASS pw\r\n")
    conn.login_succeeded()
    return conn


def unread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class Dribbler:
    """Between Dovecot and the relay: hands the relay Dovecot's replies one
    byte per read (each byte is read before the next is sent)."""

    def __init__(self, dovecot_side: socket.socket) -> None:
        self.dovecot = gevent.socket.socket(fileno=dovecot_side.detach())
        ours, self.relay_side = socket.socketpair()
        self.ours = gevent.socket.socket(fileno=ours.detach())
        self.relay_side.setblocking(False)
        self.bytes_dribbled = 0
        self._greenlets = [gevent.spawn(self._up), gevent.spawn(self._down)]

    def _up(self) -> None:
        while chunk := self.ours.recv(4096):
            self.dovecot.sendall(chunk)

    def _down(self) -> None:
        while chunk := self.dovecot.recv(4096):
            for index in range(len(chunk)):
                self.ours.sendall(chunk[index : index + 1])
                with gevent.Timeout(5, AssertionError("the relay stopped reading")):
                    while unread(self.relay_side):
                        gevent.sleep(0.0005)
                self.bytes_dribbled += 1
        self.ours.close()

    def close(self) -> None:
        gevent.killall(self._greenlets)
        for sock in (self.dovecot, self.ours, self.relay_side):
            sock.close()


class Wired:
    """A :class:`TrackedRelay` between a client application and a Dovecot session."""

    def __init__(
        self,
        dovecot: Dovecot,
        *,
        meter: Meter | None = None,
        uidl_map: Mapping[bytes, bytes] | None = None,
        dribble: bool = False,
        client_receive_buffer: int = 0,
    ) -> None:
        with socket.create_server((LOOPBACK, 0)) as server:
            self.client = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if client_receive_buffer:
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_receive_buffer)
            self.client.connect(server.getsockname())
            client_side, _ = server.accept()
        client_side.setblocking(False)
        backend = dovecot_login(dovecot, USER)
        self.dribbler: Dribbler | None = None
        if dribble:
            self.dribbler = Dribbler(backend)
            backend = self.dribbler.relay_side
        backend.setblocking(False)
        self._sockets = [client_side, backend]
        self._endpoints = [Endpoint(client_side), Endpoint(backend)]
        self.ended = gevent.event.AsyncResult()
        self.traffic = Traffic()
        self.relay = TrackedRelay(
            *self._endpoints,
            logged_in(),
            30.0,
            self.traffic,
            "tracked.example",
            self.ended.set,
            meter=meter,
            uidl_map=uidl_map,
        )
        self.relay.start([], b"")

    def read_until(self, end: bytes, size_at_least: int = 0) -> bytes:
        data = b""
        with gevent.Timeout(20, AssertionError(f"no {end!r} from the relay")):
            while not (data.endswith(end) and len(data) >= size_at_least):
                chunk = self.client.recv(262144)
                assert chunk, f"the relay closed the client early after {data[-200:]!r}"
                data += chunk
        return data

    def close(self) -> None:
        self.relay.stop("test_over")
        if self.dribbler is not None:
            self.dribbler.close()
        for endpoint in self._endpoints:
            endpoint.close_watchers()
        for sock in (self.client, *self._sockets):
            sock.close()


@pytest.fixture
def mailbox(dovecot: Dovecot) -> list[bytes]:
    """Five small messages for :data:`USER`; returns them."""
    messages = [SMALL % (n, n) for n in range(1, 6)]
    dovecot.reset_mailbox(USER, messages)
    return messages


@pytest.fixture
def wires() -> Iterator[list[Wired]]:
    made: list[Wired] = []
    yield made
    for wired in made:
        wired.close()


def test_a_spent_budget_refuses_retr_in_its_place_among_pipelined_replies(
    dovecot: Dovecot, mailbox: list[bytes], wires: list[Wired]
) -> None:
    listing, uidl = direct(dovecot, USER, [b"LIST\r\n", b"UIDL 1\r\n"])
    meter = Meter(budget=0)
    wired = Wired(dovecot, meter=meter)
    wires.append(wired)
    mark = dovecot.log_mark()
    wired.client.sendall(b"LIST\r\nRETR 1\r\nUIDL 1\r\nTOP 2 0\r\nQUIT\r\n")
    got = wired.read_until(b"+OK Logging out.\r\n")
    assert got == listing + BUDGET_SPENT + uidl + BUDGET_SPENT + b"+OK Logging out.\r\n"
    assert BUDGET_SPENT.startswith(b"-ERR [SYS/TEMP] ")
    assert wired.ended.get(timeout=5) == "quit"
    # Dovecot never saw the RETR or the TOP.
    dovecot.wait_for_log(rf"pop3\({USER}\).*Logged out top=0/0, retr=0/0, del=0/5", since=mark)
    assert meter.added == len(got)  # what the client got, every byte counted once


def test_the_message_being_sent_finishes_before_the_refusal(
    dovecot: Dovecot, wires: list[Wired]
) -> None:
    dovecot.reset_mailbox(USER, [BIG, SMALL % (2, 2)])
    body = crlf(BIG).replace(b"\r\n.", b"\r\n..")
    meter = Meter(budget=100_000)
    wired = Wired(dovecot, meter=meter, client_receive_buffer=65536)
    wires.append(wired)
    wired.client.sendall(b"RETR 1\r\n")
    head = wired.read_until(b"", size_at_least=200_000)  # the budget is spent now
    assert meter.exhausted
    assert not wired.relay._tracker.idle, "the message should still be under way"
    wired.client.sendall(b"RETR 2\r\nNOOP\r\n")
    rest = wired.read_until(b"+OK\r\n")
    got = head + rest
    status, _, after = got.partition(b"\r\n")
    assert status.startswith(b"+OK")
    assert after == body + b".\r\n" + BUDGET_SPENT + b"+OK\r\n"


def test_uidl_replies_rewritten_when_dovecot_is_read_one_byte_at_a_time(
    dovecot: Dovecot, mailbox: list[bytes], wires: list[Wired]
) -> None:
    commands = [
        b"UIDL\r\n",
        b"UIDL 1\r\n",
        b"UIDL 2\r\n",
        b"UIDL 99\r\n",
        b"LIST\r\n",
        b"RETR 3\r\n",
    ]
    listing, first, second, missing, sizes, message = direct(dovecot, USER, commands)
    uidls = dict(line.split() for line in listing.split(b"\r\n")[1:-2])
    uidl_map = {uidls[b"1"]: b"old-one", uidls[b"3"]: b"old-three"}
    wired = Wired(dovecot, uidl_map=uidl_map, dribble=True)
    wires.append(wired)
    wired.client.sendall(b"".join(commands))
    expected_listing = listing.replace(b" " + uidls[b"1"] + b"\r\n", b" old-one\r\n").replace(
        b" " + uidls[b"3"] + b"\r\n", b" old-three\r\n"
    )
    expected = (
        expected_listing
        + first.replace(uidls[b"1"], b"old-one")
        + second  # outside the map: unchanged
        + missing  # -ERR: untouched
        + sizes
        + message
    )
    got = wired.read_until(message[-40:], size_at_least=len(expected))
    assert got == expected
    assert uidls[b"1"] not in got and uidls[b"3"] not in got and uidls[b"2"] in got
    assert missing.startswith(b"-ERR")
    assert wired.relay.uidl_rewriter is not None and wired.relay.uidl_rewriter.translated == 3
    dribbler = wired.dribbler
    assert dribbler is not None
    from_dovecot = len(listing + first + second + missing + sizes + message)
    with gevent.Timeout(5, AssertionError("not every byte was read on its own")):
        while dribbler.bytes_dribbled < from_dovecot:
            gevent.sleep(0.005)


@pytest.mark.parametrize("how", ["client_closed", "kicked"])
def test_a_map_session_never_sends_quit_for_the_client(
    dovecot: Dovecot, mailbox: list[bytes], wires: list[Wired], how: str
) -> None:
    (listing,) = direct(dovecot, USER, [b"UIDL\r\n"])
    first_uidl = listing.split(b"\r\n")[1].split()[1]
    wired = Wired(dovecot, uidl_map={first_uidl: b"old-one"}, meter=Meter(budget=10**9))
    wires.append(wired)
    mark = dovecot.log_mark()
    wired.client.sendall(b"DELE 2\r\nUIDL 1\r\n")
    assert wired.read_until(b" old-one\r\n").startswith(b"+OK")
    if how == "kicked":
        wired.relay.stop("kicked")
    else:
        wired.client.close()
    assert wired.ended.get(timeout=5) == how
    wired.close()
    wires.remove(wired)
    dovecot.wait_for_log(rf"pop3\({USER}\).*Disconnected.*del=0/5", since=mark)
    assert "Logged out" not in dovecot.read_log()[mark:]
    assert dovecot.message_count(USER) == 5


# -- through a real ClientSession and a real client ------------------------------------


@dataclass(frozen=True)
class Target:
    """Dovecot as a backend target (plain POP3, no client forwarding)."""

    host: str
    port: int
    tls: str = "none"
    verify: bool = False
    ca_file: str | None = None
    server_name: str | None = None
    forward_client: str = "none"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class DovecotLogins:
    """The domain cut down to what this test needs: every login goes to
    Dovecot through the shell's real dialer, and carries the test's meter and
    map (the download budget and the migration are built elsewhere)."""

    def __init__(
        self, dovecot: Dovecot, meter: Meter | None, uidl_map: Mapping[bytes, bytes] | None
    ) -> None:
        self.target = Target(dovecot.host, dovecot.port)
        self.meter = meter
        self.uidl_map = uidl_map

    def admit(self, session_id: str, address: str | None) -> object:
        return object()

    def login(self, user: str, password: bytes, **context: object) -> LoggedIn:
        backend = Dialer().dial(
            self.target, 10.0, BackendLogin(user, password, starttls=False), None
        )
        return LoggedIn(backend, "tracked.example", user, meter=self.meter, uidl_map=self.uidl_map)

    def release(self, lease: object, then: Callable[[], None] | None = None) -> None:
        if then is not None:
            then()

    def abandon(self, login: LoggedIn) -> None:
        login.backend.close()


def run_session(
    dovecot: Dovecot,
    client: Callable[[poplib.POP3], object],
    meter: Meter | None = None,
    uidl_map: Mapping[bytes, bytes] | None = None,
) -> tuple[object, set[type]]:
    """A real :class:`ClientSession` serving poplib (in a thread of its own);
    returns what ``client`` returned and the relay classes the session ran."""
    config = parse_config(
        {"listeners": [{"name": "plain", "address": f"{LOOPBACK}:1", "tls": "none"}]}
    )
    listener = dataclasses.replace(config.listeners[0], require_tls=False)
    services = Services(config, DovecotLogins(dovecot, meter, uidl_map), server_tls={})
    outcome: dict[str, object] = {}

    def in_thread(port: int) -> None:
        try:
            pop = poplib.POP3(LOOPBACK, port, timeout=20)
            pop.user(USER)
            pop.pass_(USERS[USER])
            assert relay_seen.wait(10), "the session never started its relay"
            outcome["result"] = client(pop)
        except BaseException as error:  # handed to the test's greenlet
            outcome["error"] = error

    closed = gevent.event.Event()
    relays: set[type] = set()
    relay_seen = threading.Event()
    with socket.create_server((LOOPBACK, 0)) as server:
        thread = threading.Thread(target=in_thread, args=(server.getsockname()[1],))
        thread.start()
        sock, peer = server.accept()
    sock.setblocking(False)
    session = ClientSession(sock, peer, listener, services, lambda session: closed.set())
    session.start()
    with gevent.Timeout(30, AssertionError("the session did not end")):
        while thread.is_alive() or not closed.is_set():
            if session._relay is not None:
                relays.add(type(session._relay))
                relay_seen.set()
            gevent.sleep(0.005)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"], relays


def test_a_session_with_a_meter_or_map_runs_the_tracked_relay_for_a_real_client(
    dovecot: Dovecot, mailbox: list[bytes]
) -> None:
    (listing,) = direct(dovecot, USER, [b"UIDL\r\n"])
    backend_uidls = [line.split()[1] for line in listing.split(b"\r\n")[1:-2]]
    uidl_map = {backend_uidls[0]: b"old-one"}

    def poll(pop: poplib.POP3) -> tuple[list[bytes], str]:
        uidls = pop.uidl()[1]
        try:
            pop.retr(1)
            refusal = ""
        except poplib.error_proto as error:
            refusal = str(error)
        pop.quit()
        return uidls, refusal

    (uidls, refusal), relays = run_session(dovecot, poll, Meter(budget=0), uidl_map)
    assert relays == {TrackedRelay}
    assert uidls == [b"1 old-one"] + [b"%d %s" % (n, u) for n, u in enumerate(backend_uidls[1:], 2)]
    assert refusal.startswith("b'-ERR [SYS/TEMP]")


def test_a_session_without_meter_or_map_keeps_the_plain_relay(
    dovecot: Dovecot, mailbox: list[bytes]
) -> None:
    def fetch(pop: poplib.POP3) -> list[bytes]:
        lines = pop.retr(1)[1]
        pop.quit()
        return lines

    lines, relays = run_session(dovecot, fetch)
    assert relays == {Relay}
    assert b"short body 1" in lines
