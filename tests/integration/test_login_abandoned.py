"""A login ended from outside at the one wait a process-level test cannot
stop it at, in this process against a real Redis and a real Dovecot.

A good password clears the name's failed-login budget: a Redis round trip
after the backend login and the session slots. If the session ends there (its
AUTHORIZATION timeout, a drain, the process stopping), what the login took
must go back: the slots in Redis and the logged-in backend connection. Redis
hanging at exactly that request is the one fault injected by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import gevent.event
import pytest
from harness.dovecot import Dovecot
from harness.proxy import TENANT
from harness.redis import RedisServer
from harness.users import USERS, WRONG_PASSWORD

from pop3proxy.config import AuthConfig, Config, DirectoryConfig, LimitsConfig
from pop3proxy.directory import Directory, RedisStore
from pop3proxy.interfaces import BackendConnection, LoginFailed
from pop3proxy.login import LoginService
from pop3proxy.net.backend import BackendSocket, Dialer
from pop3proxy.net.session import SessionEnded
from pop3proxy.tenants import parse_tenant


@pytest.fixture
def service(redis_server: RedisServer, dovecot: Dovecot, request) -> Iterator[LoginService]:
    prefix = f"abandon-{request.node.callspec.id}"  # no [ ]: SCAN patterns would take them
    store = RedisStore(redis_server.client(), prefix)
    backend = {"host": dovecot.host, "port": dovecot.port}
    store.put(parse_tenant({"name": TENANT, "backends": [backend]}))
    directory_config = DirectoryConfig(redis_url=redis_server.url, key_prefix=prefix)
    config = Config(
        listeners=(),
        directory=directory_config,
        auth=AuthConfig(failure_delay=0.0),
        limits=LimitsConfig(max_sessions_per_user=1),
    )
    yield LoginService(config, Directory(store, directory_config), Dialer())
    for key in store.client.scan_iter(match=f"{prefix}:*"):
        store.client.delete(key)
    store.client.close()


def slot_holders(service: LoginService) -> set[bytes]:
    """Every session holding a slot in Redis under the service's prefix."""
    client = service.directory.redis
    holders: set[bytes] = set()
    for key in client.scan_iter(match=f"{service.config.directory.key_prefix}:lease:*"):
        holders.update(client.zrange(key, 0, -1))
    return holders


def wait_for(condition, timeout: float = 5.0) -> None:
    """Poll with gevent sleeps, so the loop runs what the login left to it."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.01)


@pytest.mark.parametrize("ending", [SessionEnded("auth_timeout"), gevent.GreenletExit()])
def test_a_login_ended_while_its_budget_is_cleared_gives_back_slots_and_backend(
    service: LoginService, ending: BaseException
):
    user = f"alice@{TENANT}"
    with pytest.raises(LoginFailed):
        service.login(user, WRONG_PASSWORD.encode())  # a failure for the good login to clear
    opened: list[BackendConnection] = []
    open_backend = service.backends.open

    def recording_open(*args, **kwargs) -> BackendConnection:
        opened.append(open_backend(*args, **kwargs))
        return opened[-1]

    service.backends.open = recording_open  # type: ignore[method-assign]
    clearing = gevent.event.Event()

    def hung_clear(*args: object) -> None:
        clearing.set()
        gevent.event.Event().wait()  # Redis never answers

    service.failures.succeeded = hung_clear  # type: ignore[method-assign]
    login = gevent.spawn(service.login, user, USERS["alice"].encode(), session_id="doomed")
    assert clearing.wait(10), "the login reached the budget reset"
    assert slot_holders(service) == {b"doomed"}
    login.kill(ending, block=True, timeout=5)
    assert login.dead
    assert isinstance(opened[0], BackendSocket)
    assert opened[0].sock.fileno() == -1, "the backend connection was closed"
    wait_for(lambda: not slot_holders(service))
    del service.failures.succeeded  # Redis answers again
    logged_in = service.login(user, USERS["alice"].encode(), session_id="next")
    assert slot_holders(service) == {b"next"}, "not refused as [IN-USE]"
    service.abandon(logged_in)
    wait_for(lambda: not slot_holders(service))
