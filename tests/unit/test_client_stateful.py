"""A stateful model of ClientConnection: any sequence of inputs and outcomes.

Hypothesis drives one connection through random data, STLS handshakes and
login outcomes, and after every step checks what must always hold:

- only the five action types come out, and a Close is always last;
- nothing is forwarded before a successful login, and nothing after QUIT;
- ``client_sent_quit`` becomes true only when a QUIT line was fed, and then
  the backend is asked to QUIT exactly once (rule 1);
- bytes fed before the STLS handshake are never interpreted after it;
- the buffer stays under ``max_line``; every reply ends with CRLF;
- the password never appears in a reply, or in the repr of an action other
  than a Forward of a line the client itself sent after login.

A second property checks that splitting the same bytes into any packets
gives the same actions (commands split across many packets).
"""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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

SECRET = b"Stateful-S3cret"
PLAIN = base64.b64encode(b"\0alice\0" + SECRET)
XOAUTH2 = base64.b64encode(b"user=alice@x\x01auth=Bearer " + SECRET + b"\x01\x01")
OAUTHBEARER = base64.b64encode(b"n,a=alice@x,\x01auth=Bearer " + SECRET + b"\x01\x01")
WORDS = [
    b"USER alice",
    b"PASS " + SECRET,
    b"AUTH PLAIN " + PLAIN,
    b"AUTH PLAIN",
    PLAIN,
    b"*",
    b"STLS",
    b"CAPA",
    b"NOOP",
    b"QUIT",
    b"STAT",
    b"RETR 1",
    b"DELE 1",
    b"quit",
    b"QUIT now",
    b"",
    b"X" * 300,
    b"AUTH XOAUTH2 " + XOAUTH2,
    b"AUTH OAUTHBEARER " + OAUTHBEARER,
    b"AUTH XOAUTH2",
    XOAUTH2,
    b"AQ==",
]
line = st.sampled_from(WORDS).map(lambda w: w + b"\r\n") | st.binary(max_size=30)
SETTINGS = st.sampled_from(
    [
        Settings(tls_active=True, stls_offered=False),
        Settings(tls_active=False, stls_offered=True),
        Settings(tls_active=False, stls_offered=False, require_tls=False),
        Settings(tls_active=False, stls_offered=True, require_tls=False, max_line=64, max_errors=4),
        Settings(
            tls_active=True,
            stls_offered=False,
            max_line=64,
            mechanisms=("PLAIN", "OAUTHBEARER", "XOAUTH2"),
        ),
    ]
)


class ClientMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conn: ClientConnection | None = None
        self.pending: list[object] = []
        self.logged_in = False
        self.quit_lines_fed = False
        self.forwarded_quits = 0
        self.closed = False

    @rule(settings=SETTINGS)
    @precondition(lambda self: self.conn is None)
    def open(self, settings: Settings) -> None:
        self.conn = ClientConnection(settings)
        self._check(self.conn.greeting())

    @rule(chunks=st.lists(line, min_size=1, max_size=6))
    @precondition(lambda self: self.conn is not None and not self.pending)
    def feed(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        if any(
            part.split(b" ")[0].upper().rstrip(b"\r\n") == b"QUIT"
            for part in data.replace(b"\r\n", b"\n").split(b"\n")
        ):
            self.quit_lines_fed = True
        self._check(self.conn.receive_data(data))

    @rule()
    @precondition(lambda self: isinstance(self._paused_on(), StartTLS))
    def handshake(self) -> None:
        self.pending.clear()
        self._check(self.conn.tls_established())

    @rule(success=st.booleans(), challenge=st.sampled_from([None, b"e30="]))
    @precondition(lambda self: isinstance(self._paused_on(), Login))
    def login_outcome(self, success: bool, challenge: bytes | None) -> None:
        self.pending.clear()
        if success:
            self.logged_in = True
            self._check(self.conn.login_succeeded())
        else:
            refusal = b"-ERR [AUTH] Authentication failed\r\n"
            self._check(self.conn.login_failed(refusal, challenge))

    def _paused_on(self) -> object:
        return self.pending[-1] if self.pending else None

    def _check(self, actions: list[object]) -> None:
        for index, action in enumerate(actions):
            assert isinstance(action, Send | StartTLS | Login | Forward | Close), action
            if not isinstance(action, Forward):
                # A Forward carries what the client itself sent in TRANSACTION
                # (a pipelined second PASS goes to the backend, which refuses it).
                assert SECRET not in repr(action).encode()
            if isinstance(action, Send):
                assert action.data.endswith(b"\r\n") and SECRET not in action.data
            if isinstance(action, Close):
                assert index == len(actions) - 1, "nothing may follow a Close"
                self.closed = True
            if isinstance(action, Forward):
                assert self.logged_in, "forwarded before login"
                assert self.forwarded_quits == 0, "forwarded after QUIT"
                if action.command == "QUIT":
                    self.forwarded_quits += 1
            if isinstance(action, StartTLS | Login):
                assert index == len(actions) - 1, "the machine pauses on StartTLS and Login"
                self.pending.append(action)

    @invariant()
    def quit_only_when_sent(self) -> None:
        if self.conn is None:
            return
        if self.conn.client_sent_quit:
            assert self.quit_lines_fed, "QUIT noted but never sent"
        if self.forwarded_quits:
            assert self.conn.client_sent_quit

    @invariant()
    def bounded(self) -> None:
        # While paused on StartTLS or Login the machine holds what one receive
        # brought (the shell reads no more until it reports back); otherwise
        # never more than a line's worth.
        running = (
            State.AUTHORIZATION,
            State.AUTH_CONTINUATION,
            State.AUTH_ERROR_ACK,
            State.TRANSACTION,
        )
        if self.conn is not None and self.conn.state in running:
            # Before login the cap has room for a token (MAX_AUTH_LINE) when a
            # token mechanism is on; in TRANSACTION it is max_line again.
            settings_ = self.conn.settings
            cap = settings_.max_line
            if self.conn.state is not State.TRANSACTION:
                cap = settings_.authorization_line
            assert self.conn._reader.buffered <= cap
        if self.closed:
            assert self.conn.state is State.CLOSED or self.conn.client_sent_quit


ClientMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestClientMachine = ClientMachine.TestCase


def _run(settings_: Settings, packets: list[bytes]) -> list[object]:
    """Feed packets, resolving StartTLS and Login with success; all actions out."""
    conn = ClientConnection(settings_)
    out: list[object] = []
    for packet in packets:
        actions = conn.receive_data(packet)
        while actions:
            out += actions
            last = actions[-1]
            if isinstance(last, StartTLS):
                actions = conn.tls_established()
            elif isinstance(last, Login):
                actions = conn.login_succeeded()
            else:
                actions = []
    return out


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.sampled_from(WORDS[:15]), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=40),
)
def test_any_packet_split_gives_the_same_actions(lines: list[bytes], cuts: list[int]) -> None:
    """One packet or many (down to a byte each): the same actions, in order.

    STLS is left out: bytes after it in the same packet are discarded on
    purpose (injection), so its outcome depends on the split by design."""
    settings_ = Settings(tls_active=True, stls_offered=False)
    data = b"".join(w + b"\r\n" for w in lines if w != b"STLS")
    points = sorted({c % (len(data) + 1) for c in cuts})
    packets = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    whole = _run(settings_, [data])
    assert _run(settings_, packets) == whole
    assert _run(settings_, [bytes([b]) for b in data]) == whole
