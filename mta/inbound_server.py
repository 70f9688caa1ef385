"""aiosmtpd for the inbound listener, which anyone can reach: a connection cap, and DATA read in
blocks.

aiosmtpd reads DATA a line at a time, with a few microseconds of Python per line on the event
loop the HTTP API shares, then joins the lines: 7 MB of tiny lines (a report of 200,000 parts)
held that loop about 85 ms for each 256 KB read and 200 ms at the end, and kept 600,000 line
objects in memory. Here the bytes of a DATA go, as they arrive, to a buffer searched for the
final ``CRLF . CRLF`` (``MessageBuffer``: C-speed work; the same 7 MB is read in about 50 ms
and no step holds the loop 50 ms); bytes after it (a client that pipelines without the
extension) go back to aiosmtpd's command reader. Over the size limit the rest is read and
dropped, and the answer is 552. Unlike aiosmtpd's, this DATA does not refuse lines over 1,000
bytes: the report parser reads them as well as any.

``protocol_factory`` gives each connection beyond the cap a 421 and closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from aiosmtpd.smtp import SMTP, syntax

log = logging.getLogger(__name__)

_END = b"\r\n.\r\n"


class MessageBuffer:
    """The bytes of one DATA up to the line with a lone dot, at most ``limit`` of them kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # the DATA command's own line end comes first, so a first line "." is found as the end
        self.data = bytearray(b"\r\n")
        self.dropped = 0  # bytes let go once over the limit
        self.too_big = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def feed(self, chunk: bytes) -> bytes | None:
        """Take bytes as they arrive; once the message ended, the bytes that follow it."""
        keep = len(_END) - 1  # what may begin the end line
        start = max(0, len(self.data) - keep)
        self.data += chunk
        end = self.data.find(_END, start)
        if end == -1:
            if self.dropped + len(self.data) > self.limit + keep:
                self.dropped += len(self.data) - keep
                del self.data[:-keep]
            return None
        after = bytes(self.data[end + len(_END) :])
        del self.data[end + 2 :]  # the last line keeps its CRLF
        self.too_big = self.dropped + end > self.limit
        if not self.ended.done():
            self.ended.set_result(None)
        return after

    def content(self) -> bytes:
        """The message without the dot-stuffing of RFC 5321 4.5.2 (a line's leading dot)."""
        return bytes(self.data.replace(b"\r\n.", b"\r\n")[2:])


class InboundSMTP(SMTP):
    """aiosmtpd's server with a DATA that reads blocks, giving its connection slot back when
    the connection ends."""

    def __init__(
        self, handler: Any, release: Callable[[], None], *, data_size_limit: int, **kwargs: Any
    ) -> None:
        super().__init__(handler, data_size_limit=data_size_limit, **kwargs)
        self._limit = data_size_limit
        self._release: Callable[[], None] | None = release
        self._message: MessageBuffer | None = None

    def data_received(self, data: bytes) -> None:
        message = self._message
        if message is None:
            super().data_received(data)  # commands: aiosmtpd reads them line by line
            return
        after = message.feed(data)
        if after is not None:
            self._message = None
            if after:
                super().data_received(after)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            if self._release is not None:
                self._release()
                self._release = None

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """The checks of aiosmtpd's DATA, then the message in blocks (``MessageBuffer``)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        message = self._message = MessageBuffer(self._limit)  # before 354: data follows
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await message.ended
        finally:
            self._message = None
        if message.too_big:
            status = f"552 5.3.4 Message too big (limit {self._limit} bytes)"
        else:
            content = message.content()
            self.envelope.content = self.envelope.original_content = content
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
        self.envelope = self._create_envelope()  # as after any DATA: a new transaction
        await self.push(status)


class _Busy(asyncio.Protocol):
    """A connection over the cap: 421 and close (the sender tries again later)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        reply = f"421 4.7.0 {self.hostname} Too many connections, try again later\r\n"
        cast(asyncio.Transport, transport).write(reply.encode())
        transport.close()


def protocol_factory(
    handler: Any, *, max_connections: int, hostname: str, **kwargs: Any
) -> Callable[[], asyncio.Protocol]:
    """Protocols for ``loop.create_server``: an ``InboundSMTP`` for each connection up to
    ``max_connections`` open at once (``kwargs`` go to aiosmtpd), a 421 beyond."""
    open_now = 0

    def release() -> None:
        nonlocal open_now
        open_now -= 1

    def protocol() -> asyncio.Protocol:
        nonlocal open_now
        if open_now >= max_connections:
            log.info("inbound connection refused: %d open (the limit)", open_now)
            return _Busy(hostname)
        open_now += 1
        return InboundSMTP(handler, release, hostname=hostname, **kwargs)

    return protocol
