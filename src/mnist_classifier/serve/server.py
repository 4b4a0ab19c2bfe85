"""The HTTP server around the app: uvicorn, with the limits of `limits.py` on connections.

uvicorn bounds what it can on its own: idle kept-alive connections (`timeout_keep_alive`),
header size (h11's 16 KiB), open connections (`limit_concurrency`, 503 beyond it). It has no
deadline for a request's headers, so a client that sends them a byte at a time (slowloris), or
connects and sends nothing, would hold its connection forever; `HeaderDeadlineH11Protocol`
closes such connections. Bodies are timed by the app (`app.BodyLimits`), which can answer 408.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mnist_classifier.serve.app import LOOPBACK_HOSTS, create_app
from mnist_classifier.serve.limits import DEFAULT_LIMITS, ServerLimits

if TYPE_CHECKING:
    from mnist_classifier.serve.loading import ServedModel

WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
# A name or IPv4 address, optionally under a leading "*." (any subdomain), or "*" for any host:
# the patterns starlette's TrustedHostMiddleware takes.
HOST_PATTERN = re.compile(r"\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")

log = logging.getLogger("uvicorn.error")


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are not in on time.

    The deadline runs from the connection's opening, and on a kept-alive connection from the
    first byte of each new request (uvicorn's keep-alive timeout covers the silence before it).
    """

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self.header_deadline is None and self.conn.their_state is h11.IDLE:
            self._start_header_deadline()  # a new request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # its headers are in
            self._cancel_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _start_header_deadline(self) -> None:
        self.header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_late(self) -> None:
        self.header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.warning(
                "Closed a connection whose request headers did not arrive within %g s",
                self.header_timeout_s,
            )
            self.transport.close()


def server_config(
    app: Any, host: str, port: int, limits: ServerLimits, **options: Any
) -> uvicorn.Config:
    """uvicorn's settings for `app` with `limits`; `options` go to uvicorn.Config as they are."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # Always h11, with the header deadline: uvicorn's default picks httptools when it is
        # installed, whose handling of odd requests differs.
        http=functools.partial(HeaderDeadlineH11Protocol, header_timeout_s=limits.header_timeout_s),
        timeout_keep_alive=limits.keep_alive_timeout_s,
        limit_concurrency=limits.max_connections,
        **options,
    )


def run_server(
    served: ServedModel,
    *,
    host: str,
    port: int,
    request_timeout_s: float,
    extra_hosts: Sequence[str] = (),
) -> None:
    """Serve `served` on host:port until interrupted; the log says what, and who may reach it."""
    hosts = allowed_hosts(host, extra_hosts)
    limits = dataclasses.replace(DEFAULT_LIMITS, request_timeout_s=request_timeout_s)
    server_app = create_app(served.predictor, served.info, limits=limits, allowed_hosts=hosts)
    settings = server_config(server_app, host, port, limits)  # also sets up uvicorn's logs
    log.info(
        "Serving %s (%s, stage %s, sha256 %s)",
        served.info.file_name,
        served.info.backend,
        served.info.stage or "none",
        served.info.digest[:12],
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("Listening on %s: other machines can reach this server", host)
        log.info(
            "Requests must name one of these hosts (add others with --allowed-host): %s",
            ", ".join([*LOOPBACK_HOSTS, *hosts]),
        )
    uvicorn.Server(settings).run()


def listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, or None if it can.

    Asked before the model is loaded, so a port in use or a host that is not this machine's is
    one line rather than uvicorn's log lines after the start. The probe binds as uvicorn does
    (SO_REUSEADDR) and lets go at once.
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as error:
        return f"--host {host!r} is not a name or address this machine can listen on ({error})"
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use: stop what listens there or "
                    "choose another --port"
                )
            return (
                f"cannot listen on {host} port {port} ({error.strerror}): choose another "
                "--host or --port"
            )
    return None


def allowed_hosts(listen_host: str, extra: Sequence[str]) -> list[str]:
    """The Host names to serve besides the loopback ones: the address listened on, unless it is
    a wildcard, and `extra`. IPv6 addresses are written as in a Host header, in brackets."""
    names = [] if listen_host in WILDCARD_ADDRESSES else [listen_host]
    return [_as_host_header(name) for name in [*names, *extra]]


def host_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be an allowed host, or None when it can."""
    if _is_ipv6(pattern) or HOST_PATTERN.fullmatch(pattern):
        return None
    return (
        f"{pattern!r} is not a host name or address (no scheme, port or path), "
        "'*.example.org', or '*' for any"
    )


def _is_ipv6(name: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(name.strip("[]")), ipaddress.IPv6Address)
    except ValueError:
        return False


def _as_host_header(name: str) -> str:
    name = name.lower()
    return f"[{name.strip('[]')}]" if _is_ipv6(name) else name
