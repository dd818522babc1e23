"""Evacuation deadlines kept next to the backend states in a real Redis."""

from __future__ import annotations

import uuid

import pytest

from pop3proxy.backends import (
    EVACUATE,
    OFFLINE,
    ONLINE,
    BackendStates,
    deadline_key,
    read_backend_states,
    write_state,
)


@pytest.fixture
def client(redis_server):
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"evac-{uuid.uuid4().hex[:8]}"


def test_an_evacuation_keeps_its_deadline_and_other_states_drop_it(client, prefix):
    write_state(client, prefix, "a:110", EVACUATE, 1_900_000_000.5)
    write_state(client, prefix, "b:110", OFFLINE)
    assert read_backend_states(client, prefix) == (
        {"a:110": EVACUATE, "b:110": OFFLINE},
        {"a:110": 1_900_000_000.5},
    )
    write_state(client, prefix, "a:110", OFFLINE)
    assert read_backend_states(client, prefix) == ({"a:110": OFFLINE, "b:110": OFFLINE}, {})
    write_state(client, prefix, "a:110", EVACUATE, 1_900_000_100.0)
    write_state(client, prefix, "a:110", ONLINE)
    assert read_backend_states(client, prefix) == ({"b:110": OFFLINE}, {})
    assert not client.exists(deadline_key(prefix))


def test_a_deadline_not_written_by_backend_set_is_ignored(client, prefix):
    write_state(client, prefix, "a:110", EVACUATE, 1_900_000_000.0)
    client.hset(deadline_key(prefix), "a:110", "tomorrow")
    client.hset(deadline_key(prefix), "c:110", "1900000000")  # not evacuated: no deadline
    assert read_backend_states(client, prefix) == ({"a:110": EVACUATE}, {})


def test_a_process_learns_the_deadline_before_its_hooks_run(client, prefix):
    """A replica that starts during an evacuation resumes it with the stored deadline."""
    write_state(client, prefix, "a:110", EVACUATE, 1_900_000_000.0)
    states = BackendStates(client, prefix)
    seen = []
    states.on_change.append(
        lambda address, before, after: seen.append(
            (address, before, after, states.deadline(address))
        )
    )
    states.update()
    assert seen == [("a:110", ONLINE, EVACUATE, 1_900_000_000.0)]
    write_state(client, prefix, "a:110", ONLINE)
    states.update()
    assert seen[-1] == ("a:110", EVACUATE, ONLINE, None)
    assert states.deadline("a:110") is None
