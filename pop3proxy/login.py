"""From credentials to a logged-in backend: tenant, record, upstream.

Every way a login can fail ends in one of two replies. Unknown tenant,
disabled tenant and a wrong password all get the same ``-ERR [AUTH]`` line,
so a client cannot tell which tenants or users exist. A failure on our side
(directory or backend unavailable) gets ``-ERR [SYS/TEMP]`` so that clients
retry. The ``result`` label tells operators which case it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from pop3proxy import metrics
from pop3proxy.backends import (
    BackendUnavailable,
    ClientAddress,
    LoginRefused,
    Upstream,
    Upstreams,
)
from pop3proxy.config import Config
from pop3proxy.directory import Directory, DirectoryUnavailable
from pop3proxy.net import tls
from pop3proxy.protocol.backend import AUTH_FAILURE, TEMPORARY_FAILURE
from pop3proxy.tenants import Tenant, split_user


class LoginFailed(Exception):
    """``reply`` goes to the client; ``result`` and ``tenant`` to logs and metrics."""

    def __init__(self, reply: bytes, result: str, tenant: str | None = None, detail: str = ""):
        super().__init__(result)
        self.reply = reply
        self.result = result
        self.tenant = tenant
        self.detail = detail


@dataclass
class Session:
    tenant: Tenant
    upstream: Upstream


class LoginService:
    """Resolves the tenant and opens the backend session (passthrough auth)."""

    def __init__(self, config: Config, directory: Directory) -> None:
        self.config = config
        self.directory = directory
        self.upstreams = Upstreams(config.backends, config.timeouts.backend_connect)

    def login(
        self,
        user: str,
        password: bytes,
        *,
        sni: str | None = None,
        client: ClientAddress | None = None,
    ) -> Session:
        """Log ``user`` in; raises :class:`LoginFailed` with the client's reply.

        ``sni`` is the TLS server name the client asked for, if any: with
        ``tenancy.sni_tenant`` it picks the tenant of a user name without one.
        ``client`` is the client's address, for ``forward_client``.
        """
        try:
            session = self._login(user, password, sni, client)
        except LoginFailed as failure:
            label = metrics.tenant_label(failure.tenant)
            metrics.AUTH.labels(label, failure.result).inc()
            raise
        label = metrics.tenant_label(session.tenant.name)
        metrics.AUTH.labels(label, "ok").inc()
        metrics.SESSIONS_LIMIT.labels(label).set(session.tenant.max_sessions)
        return session

    def _login(
        self,
        user: str,
        password: bytes,
        sni: str | None = None,
        client: ClientAddress | None = None,
    ) -> Session:
        tenancy = self.config.tenancy
        default = tls.sni_tenant(self.config, sni) or tenancy.default_tenant
        name = split_user(user, tenancy.separator, default)
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
        pin = self.directory.pinned_backend(tenant, name.local)
        login_name = tenant.backend_login(name)
        try:
            upstream = self.upstreams.open(
                tenant, login_name, password, user=name.full, client=client, pinned=pin
            )
        except LoginRefused as refused:
            result = "bad_credentials" if refused.reply == AUTH_FAILURE else "backend_refused"
            raise LoginFailed(refused.reply, result, tenant.name) from None
        except BackendUnavailable as error:
            raise LoginFailed(
                TEMPORARY_FAILURE, "backend_error", tenant.name, error.reason
            ) from None
        return Session(tenant, upstream)
