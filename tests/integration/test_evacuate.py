"""``backend set --state evacuate``: two proxy processes, one Redis, real Dovecots.

New logins go to the other backend at once; each replica ends its sessions on
the evacuated backend once each has been quiet for a moment (a RETR under
way completes first), the rest at a deadline every replica shares, and never
with QUIT to the backend (Dovecot logs ``del=0``). And ``standby``, on both
replicas, only when the online backend is down.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import select
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from harness.dovecot import Dovecot
from harness.ports import wait_until
from harness.proxy import ProxyProcess, run_cli
from harness.users import USERS
from harness.wire import Pop3Wire
from test_routing import POOL, address, login_via, metric, store

from pop3proxy.backends import EVACUATE_QUIET

APPLIED_WITHIN = 5.0
"""A replica reads the state hash every second; a CLI start takes most of one."""
QUIET_KICK_WITHIN = EVACUATE_QUIET + 4.0
"""The quiet time, the evacuation's half-second look, and a loaded machine's slack."""
BIG_MESSAGE = b"Subject: big\r\n\r\n" + b"".join(b"%074d\r\n" % line for line in range(110_000))
"""About 8 MB: more than the kernel buffers between Dovecot, proxy and client
hold, so a client that does not read keeps the reply in flight at the proxy."""


class SlowReader(Pop3Wire):
    """A client with a small receive buffer, set before connecting (so the
    window stays small): a RETR it does not read stays in flight."""

    def __init__(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(20)
        sock.connect((host, port))
        self.sock = sock
        self._stream = sock.makefile("rb")
        self.greeting = self.read_line()


def closed_within(wire: Pop3Wire, seconds: float) -> bool:
    """The proxy closed the connection (EOF) within ``seconds``, with nothing said."""
    wire.sock.settimeout(seconds)
    try:
        return wire.read_line() == b""
    except TimeoutError:
        return False


def stays_quiet(wire: Pop3Wire, seconds: float) -> bool:
    """Nothing arrives for ``seconds``, not even the end of the connection."""
    readable, _, _ = select.select([wire.sock], [], [], seconds)
    return not readable


def replicas(make_proxy, *backends: Dovecot) -> tuple[ProxyProcess, ProxyProcess]:
    """Two proxies on one Redis and key prefix, tenant ``pool.example`` on ``backends``."""
    shared = {"directory": {"key_prefix": f"evac-{uuid.uuid4().hex[:8]}"}}
    first = make_proxy(shared, start=False, tenants=False)
    second = make_proxy(shared, start=False, tenants=False)
    store(first, *(address(backend) for backend in backends))
    return first.start(), second.start()


def set_state(
    proxies: tuple[ProxyProcess, ...], backend: str, state: str, *extra: str
) -> dict[str, Any]:
    """``backend set`` from the first proxy's CLI; waits until every proxy applied it.
    Returns the CLI's structured log line."""
    result = run_cli(proxies[0].config_path, "backend", "set", backend, "--state", state, *extra)
    assert result.returncode == 0, result.stderr
    labels = {"backend": backend, "state": state}
    for proxy in proxies:
        wait_until(
            lambda proxy=proxy: metric(proxy, "pop3proxy_backend_state", **labels) == 1,
            APPLIED_WITHIN,
            message=f"{proxy.config_path.parent.name} applies {backend} {state}",
        )
    line: dict[str, Any] = json.loads(result.stderr.strip().splitlines()[-1])
    return line


def records(proxy: ProxyProcess, message: str) -> list[dict[str, Any]]:
    return [record for record in proxy.log_records() if record.get("message") == message]


def ends_on(proxy: ProxyProcess, backend: str) -> dict[str, str]:
    """User -> how their last session on ``backend`` ended, from the summary lines."""
    return {r["user"]: r["end"] for r in proxy.sessions() if r.get("backend") == backend}


def listed(proxy: ProxyProcess) -> list[dict[str, Any]]:
    result = run_cli(proxy.config_path, "backend", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


@pytest.fixture
def pool(make_dovecot, make_proxy):
    old, new = make_dovecot(), make_dovecot()
    first, second = replicas(make_proxy, old, new)
    return first, second, old, new


def test_evacuate_lets_a_retr_finish_then_ends_idle_sessions_on_both_replicas(pool):
    first, second, old, new = pool
    old.reset_mailbox("alice", [BIG_MESSAGE])
    kept = old.reset_mailbox("bob", [b"Subject: small\r\n\r\nbody\r\n"])
    with (
        SlowReader(first.host, first.ports["plain"]) as alice,
        Pop3Wire(second.host, second.ports["plain"]) as bob,
    ):
        alice.login(f"alice@{POOL}", USERS["alice"])
        bob.login(f"bob@{POOL}", USERS["bob"])
        assert alice.command("RETR 1").startswith(b"+OK")  # the body is left unread for now
        mark = old.log_mark()

        line = set_state((first, second), address(old), "evacuate", "--deadline", "10m")
        assert line["deadline"] and line["by"]
        assert login_via(first) == address(new), "new logins go to the other backend"
        assert login_via(second) == address(new)
        assert closed_within(bob, QUIET_KICK_WITHIN), "the idle session on the other replica"

        body = alice.read_multiline()  # the RETR in flight all along completes, whole
        assert body == BIG_MESSAGE + b".\r\n"
        assert closed_within(alice, QUIET_KICK_WITHIN), "then, idle, it is ended too"

        for user in ("alice", "bob"):
            old.wait_for_log(rf"pop3\({user}\).*Disconnected.*del=0/", since=mark)
    assert old.message_count("bob") == len(kept)
    for proxy, user in ((first, "alice"), (second, "bob")):
        wait_until(
            lambda proxy=proxy, user=user: (
                ends_on(proxy, address(old)).get(f"{user}@{POOL}") == "evacuated"
            ),
            5,
            message=f"{user}'s summary line says evacuated",
        )
    for proxy in (first, second):
        started = records(proxy, "evacuation started")
        assert [record["backend"] for record in started] == [address(old)]
        assert started[0]["deadline"] == line["deadline"]
        wait_until(
            lambda proxy=proxy: (
                metric(proxy, "pop3proxy_kicked_sessions_total", scope="evacuate") == 1
            ),
            10,
            message="the ended session counted",
        )
        assert metric(proxy, "pop3proxy_kicks_total", scope="evacuate") == 1
    assert listed(first) == [
        {"backend": address(old), "state": "evacuate", "deadline": line["deadline"]}
    ]


def keep_busy(wire: Pop3Wire, seconds: float) -> float | None:
    """A client that never pauses long: NOOP every 0.3 s. Returns when the proxy
    closed the session (seconds from now), or None if it was still open."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            wire.send(b"NOOP\r\n")
            if not wire.read_line():
                return time.monotonic() - started
        except OSError:
            return time.monotonic() - started
        time.sleep(0.3)  # the pace of this client, not a wait for the proxy
    return None


def test_the_deadline_ends_busy_sessions_on_every_replica_at_once(pool):
    first, second, old, _new = pool
    old.reset_mailbox("alice", [b"Subject: a\r\n\r\nbody\r\n"])
    old.reset_mailbox("bob", [b"Subject: b\r\n\r\nbody\r\n"])
    with (
        Pop3Wire(first.host, first.ports["plain"]) as alice,
        Pop3Wire(second.host, second.ports["plain"]) as bob,
    ):
        alice.login(f"alice@{POOL}", USERS["alice"])
        bob.login(f"bob@{POOL}", USERS["bob"])
        mark = old.log_mark()
        line = set_state((first, second), address(old), "evacuate", "--deadline", "4s")
        deadline = calendar.timegm(time.strptime(line["deadline"], "%Y-%m-%dT%H:%M:%SZ"))
        with ThreadPoolExecutor(2) as clients:
            busy = [clients.submit(keep_busy, wire, 15) for wire in (alice, bob)]
            assert all(each.result() is not None for each in busy), "busy sessions end too"
        assert time.time() >= deadline - 1, "not before (the stored time is whole seconds)"
        for user in ("alice", "bob"):
            old.wait_for_log(rf"pop3\({user}\).*Disconnected.*del=0/", since=mark)
    for proxy in (first, second):
        wait_until(lambda proxy=proxy: records(proxy, "evacuation done"), 5, message="done")
        done = records(proxy, "evacuation done")
        assert done[-1]["deadline"] == 1 and done[-1]["quiet"] == 0


def test_a_restarted_replica_keeps_the_deadline_and_online_stops_the_evacuation(pool, make_proxy):
    first, second, old, _new = pool
    old.reset_mailbox("alice", [BIG_MESSAGE])
    with SlowReader(first.host, first.ports["plain"]) as alice:
        alice.login(f"alice@{POOL}", USERS["alice"])
        assert alice.command("RETR 1").startswith(b"+OK")
        line = set_state((first, second), address(old), "evacuate")  # default: 5 minutes
        assert time.strptime(line["deadline"], "%Y-%m-%dT%H:%M:%SZ")
        second.stop()
        second.start()  # a replica that restarts finds the evacuation and its deadline
        wait_until(lambda: records(second, "evacuation started"), APPLIED_WITHIN, message="resumed")
        assert records(second, "evacuation started")[-1]["deadline"] == line["deadline"]

        set_state((first, second), address(old), "online")
        assert alice.read_multiline() == BIG_MESSAGE + b".\r\n"
        assert stays_quiet(alice, EVACUATE_QUIET + 2), "online again: nothing ends"
        assert alice.command("NOOP").startswith(b"+OK")
    stopped = records(first, "evacuation stopped")
    assert [(record["backend"], record["state"]) for record in stopped] == [
        (address(old), "online")
    ]
    assert listed(first) == []


def test_deadline_needs_evacuate_and_a_duration(pool):
    first = pool[0]
    for extra, expected in (
        (("--state", "offline", "--deadline", "1m"), "only with --state evacuate"),
        (("--state", "evacuate", "--deadline", "soon"), "--deadline: expected a duration"),
    ):
        result = run_cli(first.config_path, "backend", "set", "h:110", *extra)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
    assert listed(first) == []


def test_standby_takes_logins_on_every_replica_only_when_the_online_backend_is_down(pool):
    first, second, spare, main = pool
    set_state((first, second), address(spare), "standby")
    for proxy in (first, second):
        assert login_via(proxy) == address(main), "the online backend comes first"
    main.stop()
    for proxy in (first, second):
        assert login_via(proxy) == address(spare), "the standby takes over"
    assert listed(second) == [{"backend": address(spare), "state": "standby", "deadline": None}]


class HoldingBackend:
    """A POP3 backend that answers every command at once except LIST, whose
    reply it holds until :attr:`release` is set: a reply slow to begin, which
    a real Dovecot cannot be made to show on demand."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self._listener.accept()
            with conn, conn.makefile("rb") as lines:
                conn.sendall(b"+OK ready\r\n")
                for line in lines:
                    if line.upper().startswith(b"LIST"):
                        self.release.wait(30)
                        conn.sendall(b"+OK 0 messages\r\n.\r\n")
                    else:
                        conn.sendall(b"+OK\r\n")

    def close(self) -> None:
        self.release.set()
        self._listener.close()


def test_a_command_waiting_for_its_reply_is_not_cut(make_proxy):
    holding = HoldingBackend()
    try:
        proxy = make_proxy(start=False, tenants=False)
        store(proxy, f"{holding.host}:{holding.port}")
        proxy.start()
        with Pop3Wire(proxy.host, proxy.ports["plain"]) as client:
            client.login(f"alice@{POOL}", USERS["alice"])
            client.send(b"LIST\r\n")
            set_state((proxy,), f"{holding.host}:{holding.port}", "evacuate", "--deadline", "1m")
            assert stays_quiet(client, EVACUATE_QUIET + 2), "the reply is outstanding: no cut"
            holding.release.set()
            assert client.read_line() == b"+OK 0 messages\r\n"
            assert client.read_line() == b".\r\n"
            assert closed_within(client, QUIET_KICK_WITHIN), "answered, then quiet: ended"
    finally:
        holding.close()


def test_a_retr_the_budget_refused_leaves_nothing_in_flight(make_dovecot, make_proxy):
    """The proxy answers a RETR itself once the download budget is spent: no
    reply is outstanding, so an evacuation ends the session once it is quiet
    (not at the deadline, as it would if the refused RETR looked in flight)."""
    backend = make_dovecot()
    small = b"Subject: small\r\n\r\n" + b"x" * 500 + b"\r\n"
    backend.reset_mailbox("alice", [small, small])
    proxy = make_proxy({"limits": {"download_per_user_day": 100}}, start=False, tenants=False)
    store(proxy, address(backend))
    proxy.start()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as client:
        client.login(f"alice@{POOL}", USERS["alice"])
        assert client.command("RETR 1").startswith(b"+OK")
        client.read_multiline()  # the message that crosses the budget arrives whole

        def refused() -> bool:
            reply = client.command("RETR 2")
            if reply.startswith(b"+OK"):
                client.read_multiline()
                return False
            assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
            return True

        wait_until(refused, 10, interval=0.5, message="the session learns the budget is spent")
        set_state((proxy,), address(backend), "evacuate", "--deadline", "1m")
        assert closed_within(client, QUIET_KICK_WITHIN), "refused, then quiet: ended"
    wait_until(
        lambda: ends_on(proxy, address(backend)) == {f"alice@{POOL}": "evacuated"},
        5,
        message="the session summary",
    )
    assert backend.message_count("alice") == 2, "nothing deleted"
