"""Redis health (outage logged once, retries spaced), credentials, and the
directory's reaction to change messages; no servers."""

from __future__ import annotations

import itertools
import json
import logging

import gevent
import gevent.event
import pytest
import redis

from pop3proxy.config import DirectoryConfig, parse_config
from pop3proxy.directory import Directory, RedisStore
from pop3proxy.filestore import FileStore
from pop3proxy.redisconn import BackgroundReader, Backoff, RedisHealth, connection_options
from pop3proxy.tenants import parse_tenant


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_outage_and_recovery_are_logged_once_and_retries_back_off(caplog):
    caplog.set_level(logging.INFO, "pop3proxy.directory")
    clock = Clock()
    health = RedisHealth("redis://x", clock=clock)
    health.ok()
    for _ in range(50):  # fifty failed logins: one log line
        health.failed(ConnectionError("refused"))
    assert [r.message for r in caplog.records].count(
        "redis unreachable: serving cached tenants and local limits, retrying with backoff"
    ) == 1
    assert not health.should_try()  # inside the first backoff step
    clock.now += 0.2
    assert health.should_try()  # one probe ...
    assert not health.should_try()  # ... and only one per step
    health.ok()
    health.ok()
    assert [r.message for r in caplog.records].count("redis reachable again") == 1
    assert health.should_try()


def test_while_redis_is_down_no_caller_waits_and_a_background_probe_finds_it_back():
    """With a probe, every caller falls back at once while Redis is down (a
    hung Redis costs each caller a timeout otherwise); one probe at a time
    runs in a greenlet, one per backoff step, and brings it back."""
    clock = Clock()
    probes: list[float] = []
    answering = gevent.event.Event()

    def ping() -> None:
        probes.append(clock.now)
        if not answering.is_set():
            raise redis.TimeoutError("Timeout reading from socket")

    health = RedisHealth("redis://x", clock=clock, probe=ping)
    asked: list[str] = []

    def request() -> str:
        asked.append("request")
        raise redis.TimeoutError("Timeout reading from socket")

    assert health.call(request, lambda: "here") == "here"  # the first caller finds out
    for _ in range(40):
        clock.now += 0.25
        assert health.call(request, lambda: "here") == "here"
        gevent.sleep(0)  # a probe, if one was started, runs
    assert asked == ["request"], "no caller asked Redis while it was down"
    assert 3 <= len(probes) <= 8, probes  # 10 s of backoff steps: 0.1, 0.2, 0.4 ... 5
    answering.set()
    clock.now += 10
    assert health.call(lambda: "redis", lambda: "here") == "here"  # starts the probe
    gevent.sleep(0)
    assert health.up
    assert health.call(lambda: "redis", lambda: "here") == "redis"


def test_backoff_grows_to_its_cap_and_resets():
    backoff = Backoff(0.1, 5.0)
    delays = [backoff.next() for _ in range(10)]
    assert delays[0] <= 0.12 and 4.0 <= delays[-1] <= 6.0
    assert all(b >= a * 0.6 for a, b in itertools.pairwise(delays))
    backoff.reset()
    assert backoff.next() <= 0.12


def test_credentials_come_from_env_or_file_never_yaml(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    config = DirectoryConfig(
        redis_url="rediss://r:6380/0", redis_password_file=str(secret), redis_ca_file="/ca.pem"
    )
    monkeypatch.delenv("POP3PROXY_REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("POP3PROXY_REDIS_USERNAME", "proxy")
    options = connection_options(config)
    assert options["password"] == "from-file" and options["username"] == "proxy"
    assert options["ssl_ca_certs"] == "/ca.pem" and options["ssl_cert_reqs"] == "required"
    monkeypatch.setenv("POP3PROXY_REDIS_PASSWORD", "from-env")
    assert connection_options(config)["password"] == "from-env"


LISTENERS = [{"name": "p", "address": "127.0.0.1:1", "tls": "none"}]


def test_directory_config_keys_and_their_mistakes():
    config = parse_config(
        {
            "listeners": LISTENERS,
            "directory": {
                "stale_ttl": "10m",
                "redis_pool_size": 20,
                "sentinel": {"master": "m", "addresses": ["127.0.0.1:26379", ":26380"]},
            },
        }
    ).directory
    assert config.stale_ttl == 600 and config.redis_pool_size == 20
    assert config.sentinel is not None
    assert config.sentinel.addresses == (("127.0.0.1", 26379), ("127.0.0.1", 26380))
    assert DirectoryConfig().stale_ttl == 3600
    with pytest.raises(ValueError) as error:
        parse_config(
            {
                "listeners": LISTENERS,
                "directory": {
                    "cluster": True,
                    "sentinel": {"addresses": ["nope"]},
                    "redis_password_file": "/nonexistent/pw",
                },
            }
        )
    text = str(error.value)
    assert "directory.sentinel.master: is required" in text
    assert "directory.sentinel.addresses[0]: expected HOST:PORT" in text
    assert "directory.cluster: cannot be true together with sentinel" in text
    assert "directory.redis_password_file: no such file" in text


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0

    def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.data.get(key)


def record(name: str, *ports: int) -> bytes:
    tenant = parse_tenant({"name": name, "backends": [{"host": "h", "port": p} for p in ports]})
    return json.dumps(tenant.to_dict()).encode()


def test_change_messages_drop_exactly_their_entry_and_pins_follow():
    client = FakeRedis()
    client.data["p:tenant:a.example"] = record("a.example", 1, 2)
    client.data["p:tenant:b.example"] = record("b.example", 3)
    client.data["p:user:a.example:alice"] = b'{"version": 1, "backend": "h:2"}'
    directory = Directory(RedisStore(client, "p"), DirectoryConfig(cache_ttl=3600))
    tenant = directory.lookup("a.example")
    directory.lookup("b.example")
    assert directory.pinned_backend(tenant, "Alice") == "h:2"
    reads = client.gets
    client.data["p:tenant:a.example"] = record("a.example", 9)
    directory.on_change("tenant:a.example")
    assert directory.lookup("a.example").backends[0].port == 9
    directory.lookup("b.example")
    assert client.gets == reads + 1  # only the changed tenant was read again
    assert directory.pinned_backend(directory.lookup("a.example"), "alice") is None  # one backend


def test_file_store_keeps_records_when_the_new_file_is_bad(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("tenants: [{name: a.example, backends: [{host: h}]}]\n")
    store = FileStore.load(path)
    path.write_text("tenants: [{name: a.example}]\n")
    assert store.reload("test") is False
    assert store.get("a.example") is not None


class CountingReader(BackgroundReader):
    def __init__(self, client: object) -> None:
        super().__init__(client, "p", RedisHealth("redis://x"), refresh=0.01)
        self.reads = 0

    def update(self) -> None:
        self.reads += 1


def test_a_background_reader_reads_at_start_then_in_the_background_until_stopped():
    reader = CountingReader(client=object())
    reader.start()
    assert reader.reads == 1, "the first read happens before start returns"
    reader.start()  # started twice: still one greenlet
    assert reader.reads == 1
    gevent.sleep(0.1)
    assert reader.reads > 2
    reader.stop()
    gevent.sleep(0)
    stopped_at = reader.reads
    gevent.sleep(0.05)
    assert reader.reads == stopped_at
    reader.start()  # a stopped reader can start again
    assert reader.reads == stopped_at + 1
    reader.stop()


def test_a_background_reader_without_redis_reads_nothing():
    reader = CountingReader(client=None)
    reader.start()
    gevent.sleep(0.05)
    assert reader.reads == 0
    reader.stop()
