"""Known test users of the shared Dovecot backend.

Passwords are fixed so a failing test's transcript can be replayed by hand.
"""

USERS: dict[str, str] = {
    "alice": "alice-secret",
    "bob": "bob-secret",
    "carol": "carol-secret",
    "dave": "dave-secret",
    "erin": "erin-secret",
}

#: A Dovecot master user (login as ``user*proxymaster``), for proxy "local" auth work.
MASTER_USERS: dict[str, str] = {"proxymaster": "master-secret"}

WRONG_PASSWORD = "not-the-password"
