"""Live reload: certificates when their files change, configuration on SIGHUP.

Certificates. Kubernetes updates a Secret volume by writing the new files
into a fresh directory and swapping a ``..data`` symlink, so the configured
path never changes, only what it resolves to; inotify on the path would miss
it. :class:`CertificateWatcher` therefore polls ``os.stat`` (which follows
the links) of every certificate file once per ``tls.watch_interval`` in one
greenlet (a few syscalls a second), and on SIGHUP. A change builds a whole
new context; if any file fails to load the old context stays and the error
is logged once per bad version of the files.

Configuration. :func:`changes` compares the running configuration with the
file's: timeouts, limits (but ``max_connections``), tenancy, TLS, logging and
metrics labels apply at once to new sessions; listeners, the metrics address,
the directory store and ``workers`` need a restart, and are kept as they are
(:func:`live_config`) and named in the log.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable

import gevent

from pop3proxy import metrics
from pop3proxy.config import Config, ListenerConfig, TLSConfig
from pop3proxy.net import tls

log = logging.getLogger("pop3proxy.reload")

RESTART_SECTIONS = ("listeners", "directory", "workers")
"""Top-level keys whose change needs a restart, besides the two fields below."""


def changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """``(live, restart)``: the changed parts of the configuration, by key path."""
    live: list[str] = []
    restart: list[str] = []
    for field in dataclasses.fields(Config):
        name = field.name
        if name == "source":
            continue
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name in RESTART_SECTIONS:
            restart.append(name)
        elif name == "metrics":
            if (before.host, before.port) != (after.host, after.port):
                restart.append("metrics.address")
            if dataclasses.replace(before, host=after.host, port=after.port) != after:
                live.append("metrics")
        elif name == "limits":
            if before.max_connections != after.max_connections:
                restart.append("limits.max_connections")
            if dataclasses.replace(before, max_connections=after.max_connections) != after:
                live.append("limits")
        else:
            live.append(name)
    return live, restart


def live_config(old: Config, new: Config) -> Config:
    """``new`` with the parts that need a restart kept as they run now."""
    return dataclasses.replace(
        new,
        listeners=old.listeners,
        directory=old.directory,
        workers=old.workers,
        metrics=dataclasses.replace(new.metrics, host=old.metrics.host, port=old.metrics.port),
        limits=dataclasses.replace(new.limits, max_connections=old.limits.max_connections),
    )


class CertificateWatcher:
    """Holds the listeners' TLS contexts; rebuilds them when the files change.

    ``apply`` receives each new set of contexts (by listener name): the app
    stores it where sessions read it at handshake time, so handshakes from
    then on present the new certificate and sessions already running are
    untouched. Each load also sets the certificates' expiry metric.
    """

    def __init__(
        self,
        config: TLSConfig,
        listeners: tuple[ListenerConfig, ...],
        apply: Callable[[dict[str, ssl.SSLContext]], None],
    ) -> None:
        self.config = config
        self.listeners = listeners
        """Fixed for the process's life: listeners change only with a restart."""
        self.apply = apply
        self.fingerprint = tls.fingerprint(config)
        self.contexts = tls.server_contexts(config, listeners)
        """Raises at start: without a certificate there is nothing to keep."""
        metrics.set_certificate_expiries(tls.certificate_expiries(config))
        self._failed: tuple | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self.config.watch_interval > 0 and self._greenlet is None:
            self._greenlet = gevent.spawn(self._watch)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _watch(self) -> None:
        while True:
            gevent.sleep(self.config.watch_interval)
            try:
                self.check()
            except Exception:
                log.exception("certificate watch failed")

    def check(self) -> bool:
        """Reload if the files changed since the last load; True if new contexts apply."""
        now = tls.fingerprint(self.config)
        if now == self.fingerprint or now == self._failed:
            return False
        return self.reload(fingerprint=now)

    def reload(self, config: TLSConfig | None = None, fingerprint: tuple | None = None) -> bool:
        """Build contexts from ``config`` (default: the current one) and apply them.

        On failure the running contexts stay, and the reason is logged.
        """
        config = config or self.config
        fingerprint = fingerprint or tls.fingerprint(config)
        try:
            contexts = tls.server_contexts(config, self.listeners)
        except tls.CertificateError as error:
            self._failed = fingerprint
            log.error(
                "certificate reload failed: keeping the current certificate",
                extra={"error": str(error)},
            )
            return False
        if config.watch_interval != self.config.watch_interval:
            self.stop()
        self.config, self.fingerprint, self._failed = config, fingerprint, None
        self.contexts = contexts
        self.apply(contexts)
        metrics.set_certificate_expiries(tls.certificate_expiries(config))
        self.start()
        log.info(
            "certificate loaded",
            extra={"cert": config.cert, "sni": [e.name for e in tls.sni_entries(config)] or None},
        )
        return True
