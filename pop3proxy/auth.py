"""Password checks for tenants with ``auth: local`` (argon2id).

The proxy judges the password itself against a hash stored in Redis, then
logs in to the backend with the tenant's master credentials. Unknown users
are checked against a dummy hash made with the same parameters, so a wrong
user name costs the same time as a wrong password: timing tells nothing.

A hash imported from another server (:mod:`pop3proxy.legacyhashes`) is
checked by its own scheme; a wrong password against one also burns the
dummy argon2id check, so a user with a fast legacy hash is refused no
sooner than an unknown one. The first good login replaces it by argon2id.
"""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from pop3proxy.config import AuthConfig
from pop3proxy.legacyhashes import ARGON2ID_PREFIX, is_legacy, verify_legacy


@dataclass(frozen=True)
class HashParameters:
    """argon2id cost; by default the configuration's (``auth.argon2_*``)."""

    time_cost: int = AuthConfig.argon2_time_cost
    memory_cost: int = AuthConfig.argon2_memory_cost
    """KiB."""
    parallelism: int = AuthConfig.argon2_parallelism


class Passwords:
    """Hash, verify and re-hash passwords with one set of parameters."""

    def __init__(self, parameters: HashParameters = HashParameters()) -> None:
        self.hasher = PasswordHasher(
            time_cost=parameters.time_cost,
            memory_cost=parameters.memory_cost,
            parallelism=parameters.parallelism,
        )
        self._dummy = self.hasher.hash("pop3proxy dummy password for unknown users")

    def hash(self, password: bytes | str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: bytes | str) -> bool:
        """True if ``password`` matches ``stored``; ``None`` (no such user) burns
        the same time against the dummy hash and is always False."""
        if stored is not None and is_legacy(stored):
            if verify_legacy(stored, _as_bytes(password)):
                return True
            self._verify_argon2(self._dummy, password)
            return False
        return self._verify_argon2(stored or self._dummy, password) and bool(stored)

    def _verify_argon2(self, stored: str, password: bytes | str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    @classmethod
    def from_config(cls, auth: AuthConfig) -> Passwords:
        return cls(
            HashParameters(auth.argon2_time_cost, auth.argon2_memory_cost, auth.argon2_parallelism)
        )

    def needs_rehash(self, stored: str) -> bool:
        """After a good login: is it a legacy (or any non-argon2id) hash, or
        were these parameters changed since it was hashed?"""
        if not stored.startswith(ARGON2ID_PREFIX):
            return True
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True


def _as_bytes(password: bytes | str) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password
