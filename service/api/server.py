"""The HTTP server of `dscm serve`: uvicorn (h11) with the connection limits of docs/api.md.

uvicorn bounds an idle keep-alive connection but not a request head that arrives slowly or
never ends: a client could hold a connection (and a file descriptor) open for ever by sending
one header byte at a time. Each connection here gets ``http_header_timeout_s`` to deliver a
complete request head, counted from when it connects or when the previous response ended.
Malformed or oversized heads get a problem+json 400 instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.limits import MAX_HEAD_BYTES
from service.api.problems import PROBLEM_MEDIA_TYPE, problem_body
from service.runtime.config import Settings


def raw_problem(status: int, code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection (no h11 state)."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps(problem_body("", status, code, phrase, detail)).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {PROBLEM_MEDIA_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            detail = f"the request head did not arrive within {self.head_timeout_s:g} s"
            self.transport.write(raw_problem(408, "request_timeout", detail))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection and start the deadline for its first request head."""
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the head deadline of a closed connection."""
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """Parse the bytes received; a complete request head stops the deadline."""
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a complete request head arrived
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        """After a response on a kept-alive connection, start the deadline for the next request
        head."""
        super().on_response_complete()
        waiting = self.cycle is not None and self.cycle.response_complete  # no new request yet
        if waiting and not self.transport.is_closing():
            self._arm_head_deadline()

    def send_400_response(self, msg: str) -> None:
        """Answer a malformed request with a problem+json 400 (not uvicorn's plain text) and
        close."""
        self.transport.write(raw_problem(400, "malformed_request", msg))
        self.transport.close()


def protocol_class(header_timeout_s: float) -> type[HeadTimeoutProtocol]:
    """A protocol class whose connections must send a complete request head within
    ``header_timeout_s`` (slow-loris defence)."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout_s": header_timeout_s})


def server_config(app: FastAPI, settings: Settings, host: str, port: int, level: str) -> Any:
    """uvicorn's Config for ``app``: head deadline, keep-alive and head size from settings."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=level,
        log_config=None,
        http=protocol_class(settings.http_header_timeout_s),
        timeout_keep_alive=settings.http_keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )


def run_server(app: FastAPI, settings: Settings, host: str, port: int, level: str) -> None:
    """Serve ``app`` with uvicorn under server_config (head deadline, keep-alive, head size) until
    stopped."""
    uvicorn.Server(server_config(app, settings, host, port, level)).run()
