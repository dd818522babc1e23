"""Fuzz the client state machine: any bytes, any split, any outcome order.

The property is the one of tests/unit/test_client.py, for hours instead of
seconds: only the five action types, never an exception, bounded buffer,
nothing forwarded before login, the password never in a reply.
"""

from __future__ import annotations

import base64

from _driver import instrumented, run

with instrumented():
    from pop3proxy.protocol.client import (
        ClientConnection,
        Close,
        Forward,
        Login,
        Send,
        Settings,
        StartTLS,
        State,
    )

SECRET = b"Fuzz-S3cret"
SETTINGS = [
    Settings(tls_active=True, stls_offered=False),
    Settings(tls_active=False, stls_offered=True),
    Settings(tls_active=False, stls_offered=False, require_tls=False, max_line=64, max_errors=3),
]
SEEDS = [
    b"CAPA\r\nUSER alice\r\nPASS " + SECRET + b"\r\nSTAT\r\nRETR 1\r\nQUIT\r\n",
    b"STLS\r\nCAPA\r\n",
    b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + SECRET) + b"\r\nDELE 1\r\nQUIT\r\n",
    b"AUTH PLAIN\r\n" + base64.b64encode(b"\0bob\0" + SECRET) + b"\r\nLIST\r\n",
    b"USER a\x00b\r\nPASS\r\n*\r\n" + b"X" * 100,
]


def target(data: bytes) -> None:
    if not data:
        return
    settings = SETTINGS[data[0] % len(SETTINGS)]
    steps = data[1] if len(data) > 1 else 0
    body = data[2:]
    conn = ClientConnection(settings)
    logged_in = False
    pieces = [body[i : i + 1 + (steps % 7)] for i in range(0, len(body), 1 + (steps % 7))]
    for n, piece in enumerate(pieces):
        actions = conn.receive_data(piece)
        while actions:
            for action in actions:
                assert isinstance(action, Send | StartTLS | Login | Forward | Close)
                if isinstance(action, Send):
                    assert SECRET not in action.data and action.data.endswith(b"\r\n")
                if isinstance(action, Forward):
                    assert logged_in
            last = actions[-1]
            if isinstance(last, StartTLS):
                actions = conn.tls_established()
            elif isinstance(last, Login):
                logged_in = bool((steps >> (n % 8)) & 1)
                fail = b"-ERR [AUTH] Authentication failed\r\n"
                actions = conn.login_succeeded() if logged_in else conn.login_failed(fail)
            else:
                actions = []
        if conn.state is not State.CLOSED:
            assert conn._reader.buffered <= settings.max_line


if __name__ == "__main__":
    run(target, SEEDS)
