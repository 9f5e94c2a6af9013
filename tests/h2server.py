"""A minimal HTTP/2 server (h2 state machine on asyncio streams) for tests."""

from __future__ import annotations

import asyncio
import ssl

import h2.config
import h2.connection
import h2.events

from servers import LoopbackServer


class H2Server(LoopbackServer):
    """Answers every request with 200 and a fixed body."""

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(ssl_context)
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self.requests: list[dict[bytes, bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {bytes(k): bytes(v) for k, v in event.headers}
                    self.requests.append(headers)
                    body = b"hello over h2 " + headers.get(b":path", b"")
                    conn.send_headers(
                        event.stream_id,
                        [
                            (b":status", b"200"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-proto", b"h2"),
                        ],
                    )
                    conn.send_data(event.stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
