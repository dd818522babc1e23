"""From credentials to a logged-in backend: limits, tenant, password, backend.

:class:`LoginService` is the domain's side of :class:`pop3proxy.interfaces.Logins`:
a client session asks it to admit a connection and to log a user in, and
gets a :class:`~pop3proxy.interfaces.LoggedIn` or a
:class:`~pop3proxy.interfaces.LoginFailed` back.

Every way a login can fail ends in one of a few replies. Unknown tenant,
disabled tenant, unknown user and a wrong password all get the same
``-ERR [AUTH]`` line, after the same minimum time, so a client can tell
neither by the words nor by the clock which tenants or users exist. A
failure on our side gets ``-ERR [SYS/TEMP]`` so that clients retry. The
``result`` label tells operators which case it was.

A name past its failed-login budget is refused with ``-ERR [LOGIN-DELAY]``
before anything is asked of the backend. RFC 2449 defines LOGIN-DELAY as
"the user may not log in now, try later": a client that sees it waits
instead of asking its user for a new password (as ``[AUTH]`` would make it
do), which is what a legitimate user locked out by someone else's guessing
needs. It is sent for unknown names too, so it reveals nothing.

An operator's login delay (:mod:`pop3proxy.delays`) is met where it tells a
password guesser nothing new: for ``auth: local`` tenants after the proxy
has checked the password (a wrong one gets the usual ``[AUTH]``, delay or
not), for passthrough tenants before the backend login, since the delay is
there to keep the backend (a mailbox being moved) out of it. A passthrough
name with a delay of its own therefore answers ``[LOGIN-DELAY]`` to anyone
who tries it, right password or not; the guesser learns the name is
delayed, and can test no password while it is. A tenant's delay treats
every name alike. A login waits for a ``wait`` delay only as long as
``timeouts.auth`` leaves it, less ``timeouts.backend_connect`` for the
backend login that follows; a longer delay is refused at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent

from pop3proxy import apppasswords, metrics
from pop3proxy.apppasswords import Accepted, AppPassword, AppPasswords
from pop3proxy.auth import Passwords
from pop3proxy.backends import BackendPicker, BackendStates
from pop3proxy.config import Config
from pop3proxy.delays import Delay, Delays, longest_wait
from pop3proxy.directory import Directory, DirectoryUnavailable
from pop3proxy.downloads import Downloads, is_budget_delay
from pop3proxy.history import LoginHistory, LoginRecord
from pop3proxy.interfaces import (
    BackendConnection,
    BackendDialer,
    BackendUnavailable,
    ClientAddress,
    LoggedIn,
    LoginFailed,
    LoginRefused,
)
from pop3proxy.limits import AllowList, FailureLimiter, Lease, LeaseLimiter, Slot, Verdict
from pop3proxy.logs import UserLogForm, loggable_name, read_hash_key
from pop3proxy.migration import UidlMaps, UidlMapUnavailable
from pop3proxy.names import match_name, usable_server_name
from pop3proxy.oauth import TokenChecker, TokenRejected, error_challenge
from pop3proxy.protocol import replies
from pop3proxy.protocol.backend import AUTH_FAILURE, TEMPORARY_FAILURE
from pop3proxy.protocol.replies import Code
from pop3proxy.tenants import (
    Identity,
    MalformedName,
    MasterPasswordMissing,
    Tenant,
    UserName,
    split_user,
)
from pop3proxy.userrecords import UserRecord

log = logging.getLogger("pop3proxy.login")

LOCKED_OUT = replies.err("Too many failed logins, try again later", Code.LOGIN_DELAY)
IN_USE = replies.err("Mailbox is in use by another session", Code.IN_USE)
TENANT_FULL = replies.err("Too many sessions for this domain, try again later", Code.SYS_TEMP)
DELAYED = replies.err("Logins are paused for this mailbox, try again later", Code.LOGIN_DELAY)
BUDGET_USED_UP = replies.err(
    "Daily download limit reached, try again tomorrow (UTC)", Code.LOGIN_DELAY
)

REFUSALS = frozenset(
    {
        "bad_credentials",
        "unknown_tenant",
        "unknown_user",
        "disabled",
        "malformed_name",
        "expired",  # an app password past its expiry
        "not_allowed_from",  # an app password from outside its networks
    }
)
"""Results that mean "wrong credentials" to the client: counted against the
budgets and held back to the same minimum time."""


def sni_tenant(config: Config, name: str | None) -> str | None:
    """The tenant a TLS server name picks (``tenancy.sni_tenant``), or ``None``.

    A ``tls.sni`` entry with a ``tenant`` names it; any other name is taken as
    the tenant name itself (``acme.example`` for a client that connects to
    ``acme.example``), if it can be one.
    """
    name = usable_server_name(name)
    if not config.tenancy.sni_tenant or not name:
        return None
    entries = {entry.name: entry for entry in config.tls.sni}
    found = match_name(entries, name)
    if found is not None and entries[found].tenant:
        return entries[found].tenant
    return name


class RefusalClock:
    """How long a refusal must take so that all refusals look alike.

    The floor is ``auth.failure_delay``; when the backends take longer to
    refuse a wrong password (Dovecot waits 2 s by default), refusals the proxy
    decides alone are held as long as the backends' recent typical refusal.
    """

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.backend_refusal = 0.0

    def observe_backend_refusal(self, seconds: float) -> None:
        if not self.backend_refusal:
            self.backend_refusal = seconds
        else:
            self.backend_refusal = 0.8 * self.backend_refusal + 0.2 * seconds

    def minimum(self) -> float:
        return max(self.floor, self.backend_refusal)


def user_log_form(config: Config) -> UserLogForm:
    """``logging.user`` and its key (read at start and on SIGHUP)."""
    logging_config = config.logging
    hashed = logging_config.user == "hash"
    key = read_hash_key(logging_config.user_hash_key_file) if hashed else b""
    return UserLogForm(logging_config.user, key)


class LoginService:
    """Runs a login: budgets, tenant, password (passthrough or local), leases."""

    def __init__(self, config: Config, directory: Directory, dialer: BackendDialer) -> None:
        """``dialer``: the shell's, which connects to a backend and runs the login on it."""
        self.directory = directory
        prefix = config.directory.key_prefix
        states = BackendStates(directory.redis, prefix, directory.redis_health)
        self.backends = BackendPicker(
            config.backends, config.timeouts.backend_connect, dialer, states
        )
        self.leases = LeaseLimiter(
            directory.redis, prefix, config.limits.lease_ttl, health=directory.redis_health
        )
        self.uidl_maps = UidlMaps(directory.redis, prefix, directory.redis_health)
        self._renewer: gevent.Greenlet | None = None
        self.delays = Delays(
            directory.redis,
            prefix,
            directory.redis_health,
            log_user=lambda name: self.log_user(name),
        )
        self.downloads = Downloads(
            directory.redis,
            prefix,
            directory.redis_health,
            self.delays,
            log_user=lambda name: self.log_user(name),
        )
        self.app_passwords = AppPasswords()
        directory.on_user_change = self.app_passwords.verified.forget_user
        self.tokens: TokenChecker | None = None
        self.config = config

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """Applied at start and on SIGHUP: budgets and hashing follow the file."""
        self._config = config
        auth = config.auth
        prefix = config.directory.key_prefix
        self.failures = FailureLimiter(
            self.directory.redis,
            prefix,
            auth,
            AllowList(auth.allow),
            health=self.directory.redis_health,
        )
        self.passwords = Passwords.from_config(auth)
        self.refusal_clock = RefusalClock(auth.failure_delay)
        self._configure_tokens(config)
        self.log_user = user_log_form(config)
        self.downloads.budget = config.limits.download_per_user_day
        health = self.directory.redis_health
        self.history = (
            LoginHistory(
                self.directory.redis,
                prefix,
                health,
                config.limits.login_history,
                config.limits.login_history_ttl,
            )
            if health is not None and self.directory.redis is not None
            else None
        )

    def _configure_tokens(self, config: Config) -> None:
        """The token checker keeps its cached keys across a reload; only its
        timings follow the file."""
        auth = config.auth
        if self.tokens is None:
            self.tokens = TokenChecker.from_settings(
                auth.oauth_keys_max_age, auth.oauth_keys_refetch_cooldown, auth.oauth_http_timeout
            )
        keys = self.tokens.keys
        keys.max_age = auth.oauth_keys_max_age
        keys.refetch_cooldown = auth.oauth_keys_refetch_cooldown
        keys.http.timeout = auth.oauth_http_timeout

    def start(self) -> None:
        """Renew this process's leases, so only a dead process's slots expire."""
        if self._renewer is None:
            self._renewer = gevent.spawn(self._renew_forever)
        self.backends.states.start()
        self.delays.start()
        self.downloads.start()
        self.uidl_maps.start()

    def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.kill(block=False)
        self.delays.stop()
        self.downloads.stop()
        self.uidl_maps.stop()

    def _renew_forever(self) -> None:
        while True:
            gevent.sleep(self.leases.lease_ttl / 3)
            self.leases.renew()

    def admit(self, session_id: str, address: str | None) -> Lease | None:
        """A connection slot for ``address``; ``None`` when it has too many open."""
        limit = self.config.limits.max_connections_per_address
        if not limit or not address:
            return Lease(session_id)
        lease, full = self._acquire(session_id, [Slot("address", address, limit)])
        if full is not None:
            metrics.add(metrics.LIMIT_REJECTIONS, "address")
        return lease

    def _acquire(self, session_id: str, slots: list[Slot]) -> tuple[Lease | None, Slot | None]:
        """:meth:`LeaseLimiter.acquire`, and if it is cut short (the session
        ended, or the process stops, while Redis had the request), every slot
        it asked for is given back: Redis may still carry the request out
        when it gets to it, and reads it before the release sent after it."""
        try:
            return self.leases.acquire(session_id, slots)
        except BaseException:
            self.release(self.leases.claim(session_id, slots))
            raise

    def release(self, lease: Lease | None, then: Callable[[], None] | None = None) -> None:
        """Give a lease's slots back, then run ``then``.

        Sessions call this from the event loop, which must not wait: a Redis
        round trip runs in a greenlet of its own, and ``then`` after it. A
        session closes its client's socket in ``then``, so a client that
        reconnects at once never finds its own old slot still taken.
        """
        if lease is not None and lease.keys and lease.shared:
            gevent.spawn_raw(self._release, lease, then)
            return
        if lease is not None:
            self.leases.release(lease)
        if then is not None:
            then()

    def _release(self, lease: Lease, then: Callable[[], None] | None) -> None:
        self.leases.release(lease)
        if then is not None:
            then()

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
        """Log ``user`` in; raises :class:`LoginFailed` with the client's reply.

        ``sni`` is the TLS server name the client asked for, if any: with
        ``tenancy.sni_tenant`` it picks the tenant of a user name without one.
        ``client`` is the client's address, for budgets and ``forward_client``.
        ``token`` (OAUTHBEARER, XOAUTH2) is checked against the tenant's
        issuer instead of a password, and counts against the same budgets.
        """
        started = time.monotonic()
        address = client.source[0] if client else None
        tenancy = self.config.tenancy
        default = sni_tenant(self.config, sni) or tenancy.default_tenant
        try:
            name: UserName | None = split_user(user, tenancy.separator, default)
        except MalformedName:
            name = None
        # The failure budgets' key, before the tenant (and its case rule) is
        # known: see UserName.folded. A malformed name keeps one of its own,
        # which no well-formed name ever checks.
        budget = name.folded if name is not None else user.lower()
        verdict = Verdict(blocked=False)
        # The ``mechanism`` label of a refused attempt: what the client offered.
        if token is not None:
            attempted = "oauth"
        elif apppasswords.looks_like(password):
            attempted = apppasswords.MECHANISM
        else:
            attempted = "password"
        try:
            verdict = self._check_budgets(budget, address)
            if name is None:
                raise LoginFailed(AUTH_FAILURE, "malformed_name")
            tenant, logged_in = self._login(name, password, client, session_id, started, token)
        except LoginFailed as failure:
            if token is not None and failure.reply == AUTH_FAILURE and failure.challenge is None:
                # RFC 7628 section 3.2.2 for every refusal of a token, the
                # unknown tenant's too: the same exchange, nothing told.
                failure.challenge = error_challenge(None)
            # As the login understood the name: canonical once the tenant was
            # found, else folded as the budgets key it, else as typed; made safe.
            understood = failure.user or (name.folded if name else user)
            failure.log_user = self.log_user(loggable_name(understood))
            if failure.user is not None and failure.result != "unknown_user":
                entry = LoginRecord(time.time(), address, listener, mechanism, failure.result)
                self._remember(failure.user, entry)
            metrics.add(
                metrics.AUTH, metrics.tenant_label(failure.tenant), failure.result, attempted
            )
            self._hold_back(failure, budget, address, verdict, started)
            raise
        try:
            self.failures.succeeded(budget, address, verdict)
        except BaseException:  # ended while Redis had the reset: nobody takes the session
            self.abandon(logged_in)
            raise
        self._remember(
            logged_in.user,
            LoginRecord(
                time.time(),
                address,
                listener,
                mechanism,
                "ok",
                logged_in.backend.address,
                logged_in.credential,
                logged_in.credential_label,
            ),
        )
        label = metrics.tenant_label(tenant.name)
        metrics.add(metrics.AUTH, label, "ok", logged_in.mechanism)
        metrics.set_gauge(metrics.SESSIONS_LIMIT, label, value=tenant.max_sessions)
        return logged_in

    def _remember(self, user: str, entry: LoginRecord) -> None:
        """Add to the user's login history, off the session's path: the
        client's reply does not wait for the round trip."""
        if self.history is not None and (self.history.size or entry.credential):
            gevent.spawn_raw(self.history.record, user, entry)

    def abandon(self, login: LoggedIn) -> None:
        """Give back what a login took, for a session nobody will use: the
        backend connection closes without QUIT (the backend never enters
        UPDATE, so nothing is deleted) and the slots go back."""
        login.backend.close()
        self.release(login.lease)

    def _hold_back(
        self,
        failure: LoginFailed,
        budget: str,
        address: str | None,
        verdict: Verdict,
        started: float,
    ) -> None:
        """Wait before the refusal: the same minimum for every refusal, plus the
        growing back-off once a name or address has failed often."""
        if failure.result == "bad_credentials" and failure.detail == "backend":
            self.refusal_clock.observe_backend_refusal(time.monotonic() - started)
        if failure.result not in REFUSALS and failure.result != "limited":
            return
        backoff = 0.0
        if failure.result in REFUSALS:
            backoff = self.failures.failed(budget, address, known=verdict.known)
        remaining = self.refusal_clock.minimum() - (time.monotonic() - started)
        delay = max(remaining, 0.0) + backoff
        if delay > 0:
            metrics.add(metrics.LOGIN_DELAYS, amount=delay)
            gevent.sleep(delay)

    def _check_budgets(self, budget: str, address: str | None) -> Verdict:
        verdict = self.failures.check(budget, address)
        if verdict.blocked:
            metrics.add(metrics.LIMIT_REJECTIONS, f"failures_{verdict.scope}")
            raise LoginFailed(LOCKED_OUT, "limited")
        return verdict

    def _login(
        self,
        name: UserName,
        password: bytes,
        client: ClientAddress | None,
        session_id: str,
        started: float,
        token: bytes | None = None,
    ) -> tuple[Tenant, LoggedIn]:
        tenant = self._tenant(name)
        # From here on one identity, however the name was typed: the record,
        # the pin, the backend login name, the session slot and the logs.
        user = tenant.identity(name)
        try:
            app_password = (
                None
                if token is not None
                else self.app_passwords.check(
                    tenant.name,
                    tenant.app_passwords,
                    user.local,
                    password,
                    client.source[0] if client else None,
                    lambda: self._app_passwords_of(tenant, user),
                )
            )
            connection, lease = self._open_with_slots(
                tenant, user, password, client, session_id, started, app_password, token
            )
        except LoginFailed as failure:
            failure.user = user.full
            raise
        full = user.full
        try:
            uidl_map = self.uidl_maps.for_login(full, connection.address)
        except UidlMapUnavailable as error:
            connection.close()  # no QUIT: the backend never enters UPDATE
            self.release(lease)
            refusal = LoginFailed(TEMPORARY_FAILURE, "directory_error", tenant.name, str(error))
            refusal.user = full
            raise refusal from None
        meter = self.downloads.meter(full)  # memory only: no Redis on the login's path
        logged_in = LoggedIn(
            connection,
            tenant.name,
            full,
            lease,
            self.log_user(full),
            meter=meter,
            uidl_map=uidl_map,
        )
        if app_password is not None:
            logged_in.mechanism = apppasswords.MECHANISM
            logged_in.credential = app_password.id
            logged_in.credential_label = app_password.label
        if token is not None:
            logged_in.mechanism = "oauth"
        return tenant, logged_in

    def _open_with_slots(
        self,
        tenant: Tenant,
        user: Identity,
        password: bytes,
        client: ClientAddress | None,
        session_id: str,
        started: float,
        app_password: Accepted | None,
        token: bytes | None = None,
    ) -> tuple[BackendConnection, Lease]:
        """The backend login: with the client's password (passthrough), or
        as the master user once the proxy judged the credential itself
        (``auth: local``, or an app password)."""
        as_master = app_password is not None or tenant.auth == "local"
        backend_password = password
        if token is not None:
            self._check_token(tenant, user, token)
            # With master credentials the proxy logs in itself; without, the
            # tenant's backends take the token (login_command: xoauth2).
            as_master = tenant.has_master_credentials
            backend_password = b""
        elif app_password is None and tenant.auth == "local":
            self._check_local_password(tenant, user, password)
        if as_master:
            backend_password = self._master_password(tenant)
        self._respect_delay(tenant, user, started)
        connection = self._open(tenant, user, backend_password, client, as_master, token)
        try:
            lease = self._take_slots(tenant, user, session_id)
        except BaseException:  # refused, or ended while Redis had the request
            connection.close()  # no QUIT: the backend never enters UPDATE
            raise
        return connection, lease

    def _respect_delay(self, tenant: Tenant, user: Identity, started: float) -> None:
        """Wait out a login delay of the user or tenant, or refuse the login
        with ``[LOGIN-DELAY]`` (see the module's docstring for where this runs).
        A user whose download budget this process saw run out is refused
        before the budget's delay reaches every replica."""
        if self.downloads.exhausted(user.full):
            metrics.add(metrics.DELAYED_LOGINS, "refused")
            raise LoginFailed(BUDGET_USED_UP, "download_budget", tenant.name)
        allowance = longest_wait(self.config.timeouts) - (time.monotonic() - started)
        held = self.delays.hold(tenant.name, user.full, allowance)
        if held is None:
            return
        if held.waited:
            metrics.add(metrics.DELAYED_LOGIN_WAIT, amount=held.waited)
        if held.refused is None:
            metrics.add(metrics.DELAYED_LOGINS, "waited")
            return
        metrics.add(metrics.DELAYED_LOGINS, "refused")
        raise LoginFailed(*self._delay_refusal(held.refused), tenant.name)

    def _delay_refusal(self, delay: Delay) -> tuple[bytes, str]:
        """The reply and the result label of a login a delay refuses."""
        if is_budget_delay(delay.reason):
            return BUDGET_USED_UP, "download_budget"
        return DELAYED, "delayed"

    def _tenant(self, name: UserName) -> Tenant:
        if name.tenant is None:
            raise LoginFailed(AUTH_FAILURE, "unknown_tenant")
        try:
            tenant = self.directory.lookup(name.tenant)
        except DirectoryUnavailable as error:
            raise LoginFailed(TEMPORARY_FAILURE, "directory_error", detail=str(error)) from None
        if tenant is None:
            raise LoginFailed(AUTH_FAILURE, "unknown_tenant")
        if not tenant.enabled:
            raise LoginFailed(AUTH_FAILURE, "disabled", tenant.name)
        return tenant

    def _check_token(self, tenant: Tenant, user: Identity, token: bytes) -> None:
        """The token is valid for this tenant's issuer and names ``user``.

        The tenant is the one the client's user name names, so only its
        issuer's keys are tried, and the token's name claim must be that very
        user of that tenant: a token of tenant A never opens a mailbox of
        tenant B, even when both trust one issuer.
        """
        oauth = tenant.oauth
        if oauth is None:
            raise LoginFailed(AUTH_FAILURE, "bad_credentials", tenant.name, "token: no oauth")
        assert self.tokens is not None
        try:
            claimed = self.tokens.user(oauth, token)
        except TokenRejected as rejected:
            if rejected.temporary:
                raise LoginFailed(
                    TEMPORARY_FAILURE, "issuer_error", tenant.name, f"token: {rejected.reason}"
                ) from None
            failure = LoginFailed(
                AUTH_FAILURE, "bad_credentials", tenant.name, f"token: {rejected.reason}"
            )
            failure.challenge = error_challenge(oauth)
            raise failure from None
        if not self._names(tenant, claimed, user):
            failure = LoginFailed(AUTH_FAILURE, "bad_credentials", tenant.name, "token: user")
            failure.challenge = error_challenge(oauth)
            raise failure

    def _names(self, tenant: Tenant, claimed: str, user: Identity) -> bool:
        """The token's name claim is ``user``: the same tenant, and the same
        local part under the tenant's case rule."""
        try:
            name = split_user(claimed, user.separator, None)
        except MalformedName:
            return False
        return name.tenant == tenant.name and tenant.identity(name) == user

    def _user_record(self, tenant: Tenant, user: Identity) -> UserRecord | None:
        try:
            return self.directory.user_record(tenant.name, user.local)
        except DirectoryUnavailable as error:
            raise LoginFailed(
                TEMPORARY_FAILURE, "directory_error", tenant.name, str(error)
            ) from None

    def _app_passwords_of(self, tenant: Tenant, user: Identity) -> tuple[AppPassword, ...]:
        record = self._user_record(tenant, user)
        return record.app_passwords if record is not None else ()

    def _check_local_password(self, tenant: Tenant, user: Identity, password: bytes) -> None:
        """argon2id against the user record, off the event loop (argon2 releases
        the GIL, so checks run in parallel on the hub's thread pool)."""
        record = self._user_record(tenant, user)
        stored = record.password_hash if record is not None else None
        threadpool = gevent.get_hub().threadpool
        if not threadpool.apply(self.passwords.verify, (stored, password)):
            result = "bad_credentials" if stored else "unknown_user"
            raise LoginFailed(AUTH_FAILURE, result, tenant.name)
        assert stored is not None
        if self.passwords.needs_rehash(stored):
            gevent.spawn(self._rehash, tenant.name, user.local, password)

    def _rehash(self, tenant: str, local: str, password: bytes) -> None:
        """The hash parameters changed since this password was set: store a new hash."""
        try:
            fresh = gevent.get_hub().threadpool.apply(self.passwords.hash, (password,))
            self.directory.update_password_hash(tenant, local, fresh)
        except Exception as error:
            log.warning("password rehash failed", extra={"tenant": tenant, "error": str(error)})

    def _master_password(self, tenant: Tenant) -> bytes:
        try:
            return tenant.master_password()
        except MasterPasswordMissing as error:
            log.error(
                "master password unavailable", extra={"tenant": tenant.name, "error": str(error)}
            )
            raise LoginFailed(TEMPORARY_FAILURE, "backend_error", tenant.name, str(error)) from None

    def _open(
        self,
        tenant: Tenant,
        user: Identity,
        password: bytes,
        client: ClientAddress | None,
        as_master: bool,
        token: bytes | None = None,
    ) -> BackendConnection:
        pin = self.directory.pinned_backend(tenant, user.local)
        login_name = tenant.backend_login(user, as_master)
        try:
            return self.backends.open(
                tenant,
                login_name,
                password,
                user=user.full,
                client=client,
                pinned=pin,
                token=None if as_master else token,
            )
        except LoginRefused as refused:
            if refused.reply != AUTH_FAILURE:
                raise LoginFailed(refused.reply, "backend_refused", tenant.name) from None
            raise LoginFailed(AUTH_FAILURE, "bad_credentials", tenant.name, "backend") from None
        except BackendUnavailable as error:
            raise LoginFailed(
                TEMPORARY_FAILURE, "backend_error", tenant.name, error.reason
            ) from None

    def _take_slots(self, tenant: Tenant, user: Identity, session_id: str) -> Lease:
        """Sessions per tenant and per user, taken only after the credentials
        were accepted: taken before, ``[IN-USE]`` would tell a guesser that
        the user exists and is reading mail right now."""
        slots = [Slot("tenant", tenant.name, tenant.max_sessions)]
        per_user = self.config.limits.max_sessions_per_user
        if per_user:
            slots.append(Slot("user", user.full, per_user))
        lease, full = self._acquire(session_id, slots)
        if full is None:
            assert lease is not None
            return lease
        metrics.add(metrics.LIMIT_REJECTIONS, full.scope)
        if full.scope == "user":
            raise LoginFailed(IN_USE, "in_use", tenant.name)
        raise LoginFailed(TENANT_FULL, "tenant_full", tenant.name)
