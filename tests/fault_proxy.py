"""A loopback TCP proxy in front of a database server that cuts or silences the connections it carries.

It runs in a thread of its own (its own event loop), so a test's ``asyncio.run`` is unaffected. A fault is
armed for the next client message that contains ``trigger`` on a connection whose earlier messages held
``after`` (when given); the first connection to match has the fault, the others pass untouched:

- ``"drop"``: the message never reaches the server, and both sides of the connection are closed
  (a cut just before a COMMIT arrives);
- ``"reply_lost"``: the message reaches the server, its reply is thrown away, and both sides are closed
  once the server has answered (a COMMIT applied whose reply is lost);
- ``"silence"``: the message and everything after it in both directions is held back, and the sockets
  stay open even when one end closes its own (a half-open connection: a firewall dropping packets, a
  vanished host).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Fault:
    trigger: bytes
    action: str
    after: bytes | None = None
    fired: threading.Event = field(default_factory=threading.Event)


class _Link:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.sent = b""  # what the client sent, kept to match ``after``
        self.silenced = False
        self.lose_next_reply = False

    def close(self) -> None:
        for writer in (self.client, self.server):
            try:
                # RST rather than FIN: what a cut cable or a killed proxy looks like to both ends.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                writer.close()
            except Exception:
                pass


class FaultProxy:
    """Listens on a free loopback port and forwards to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.links: list[_Link] = []
        self.fault: Fault | None = None
        self.connections = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self.port = int(self.server.sockets[0].getsockname()[1])
        ready.set()
        self.loop.run_forever()
        # What is left of the connections' tasks is dropped with the loop.
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))

    def arm(self, trigger: bytes, action: str, after: bytes | None = None) -> Fault:
        """Fault the next message holding ``trigger`` (see the module's docstring)."""
        assert action in ("drop", "reply_lost", "silence")
        self.fault = Fault(trigger, action, after)
        return self.fault

    def url(self, direct_url: str) -> str:
        from sqlalchemy.engine import make_url

        return (
            make_url(direct_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def close(self) -> None:
        def stop() -> None:
            for link in self.links:
                link.close()
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)
        self.loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._carry(reader, writer)
        except asyncio.CancelledError:
            pass  # the proxy is closing: its connections end with it

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        link = _Link(writer, server_writer)
        self.links.append(link)
        await asyncio.gather(
            self._pipe(link, reader, server_writer, upstream=True),
            self._pipe(link, server_reader, writer, upstream=False),
            return_exceptions=True,
        )
        if not link.silenced:
            link.close()

    async def _pipe(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                if link.silenced:
                    return  # the other end never hears of it: its socket stays open (half-open)
                link.close()
                return
            if link.silenced:
                continue  # held back for ever: the other end hears nothing
            if upstream:
                fault = self.fault
                if (
                    fault is not None
                    and fault.trigger in data
                    and (fault.after is None or fault.after in link.sent)
                ):
                    self.fault = None
                    fault.fired.set()
                    if fault.action == "drop":
                        link.close()
                        return
                    if fault.action == "silence":
                        link.silenced = True
                        continue
                    link.lose_next_reply = True
                link.sent += data
            elif link.lose_next_reply:
                link.close()
                return
            writer.write(data)
            await writer.drain()
