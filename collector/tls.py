"""TLS for every server tailsift runs (OTLP gRPC, OTLP HTTP, the query API), with rotation.

The keys follow the OTel Collector's ``configtls`` so its users recognise them::

    tls:
      cert_file: /etc/tailsift/server.pem
      key_file: /etc/tailsift/server-key.pem
      client_ca_file: /etc/tailsift/clients-ca.pem   # mTLS: client certificates required
      min_version: "1.2"
      reload_interval: 1m                            # pick up rotated files, no restart

A file that is missing, unreadable or not a certificate/key is a configuration error that
names the key, found when the configuration is loaded rather than at the first handshake.

Rotation: every ``reload_interval`` the files' modification times are compared with the
last load. The HTTP servers load the new pair into the same ``ssl.SSLContext`` (new
handshakes use it, open connections keep theirs); gRPC asks :meth:`ServerTls.grpc_fetch` at
each handshake, which answers with the new configuration once the files changed. A rotated
pair that does not load is logged and the previous one stays in use.

Thread safety: ``grpc_fetch`` runs on gRPC's threads and the reload task on the event loop;
they share ``_stamp`` and ``_loaded``, guarded by ``_lock``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from collector.runtime import stop_task
from processors.units import StrictModel, duration_fields, readable_files

log = logging.getLogger("tailsift.tls")


class TlsSettings(StrictModel):
    cert_file: str
    """PEM certificate chain the server presents."""
    key_file: str
    """PEM private key of ``cert_file`` (unencrypted)."""
    client_ca_file: str | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    reload_interval: int = 0
    """How often the files are checked for rotation; 0: loaded once at start."""

    _time = duration_fields("reload_interval")

    _files = readable_files("cert_file", "key_file", "client_ca_file")

    @model_validator(mode="after")
    def _loads(self) -> TlsSettings:
        server_context(self)  # raises ValueError naming the key
        return self

    def stamp(self) -> tuple[float, ...]:
        """Modification times of the files, to notice a rotation."""
        paths = [self.cert_file, self.key_file] + ([self.client_ca_file] if self.client_ca_file else [])
        out = []
        for path in paths:
            try:
                out.append(os.stat(path).st_mtime)
            except OSError:
                out.append(-1.0)
        return tuple(out)


def server_context(settings: TlsSettings, context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """An ``SSLContext`` for a server (or ``context`` reloaded in place). Errors name the key."""
    ctx = context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if settings.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except ssl.SSLError as exc:
        raise ValueError(f"cert_file/key_file: not a matching PEM certificate and key ({exc.reason})") from None
    if settings.client_ca_file:
        try:
            ctx.load_verify_locations(settings.client_ca_file)
        except ssl.SSLError as exc:
            raise ValueError(f"client_ca_file: not a PEM CA bundle ({exc.reason})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ServerTls:
    """One server's TLS: its context (HTTP) or credentials (gRPC), and the rotation task.

    Component: ``start`` / ``shutdown`` (safe twice, and without start)."""

    def __init__(self, settings: TlsSettings, name: str):
        self.settings = settings
        self.name = name
        self.context = server_context(settings)
        self.reloads = 0
        self._lock = threading.Lock()
        self._stamp = settings.stamp()
        self._checked = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.settings.reload_interval > 0:
            self._task = asyncio.create_task(self._watch(), name=f"tls-reload-{self.name}")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    def _changed(self) -> bool:
        """Whether the files changed since the last load (checked at most every interval)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.settings.reload_interval / 1e9:
                return False
            self._checked = now
            stamp = self.settings.stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval / 1e9)
            if self._changed():
                try:
                    server_context(self.settings, self.context)
                except (ValueError, OSError) as exc:
                    log.warning("%s: rotated TLS files not loaded, the previous ones stay in use: %s", self.name, exc)
                    continue
                self.reloads += 1
                log.info("%s: TLS certificate reloaded", self.name)

    def grpc_credentials(self) -> Any:
        """gRPC server credentials that ask :meth:`grpc_fetch` for a newer pair at each handshake."""
        import grpc

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(), self.grpc_fetch, require_client_authentication=bool(self.settings.client_ca_file))

    def _grpc_config(self) -> Any:
        import grpc

        s = self.settings
        pair = (Path(s.key_file).read_bytes(), Path(s.cert_file).read_bytes())
        ca = Path(s.client_ca_file).read_bytes() if s.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def grpc_fetch(self) -> Any:
        """Called by gRPC before each handshake: a new configuration, or None to keep the current."""
        if self.settings.reload_interval <= 0 or not self._changed():
            return None
        try:
            server_context(self.settings)  # the same checks as at start
            config = self._grpc_config()
        except (ValueError, OSError) as exc:
            log.warning("%s: rotated TLS files not loaded, the previous ones stay in use: %s", self.name, exc)
            return None
        self.reloads += 1
        log.info("%s: TLS certificate reloaded", self.name)
        return config
