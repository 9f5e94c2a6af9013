"""A small authoritative DNS server for ``probekit.test`` on 127.0.0.1 (UDP), for the
exporter side-by-side test and benchmark: ``www.probekit.test`` has two A records, every other
name is NXDOMAIN with the zone's SOA. dnspython builds the replies."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator


class _Dns(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        import dns.message
        import dns.rcode
        import dns.rrset

        data, sock = self.request
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower()
        if name == "www.probekit.test.":
            if question.rdtype == 1:  # A
                reply.answer.append(
                    dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.10", "192.0.2.11")
                )
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            soa = "ns.probekit.test. admin.probekit.test. 7 3600 600 86400 300"
            reply.authority.append(dns.rrset.from_text("probekit.test.", 300, "IN", "SOA", soa))
        sock.sendto(reply.to_wire(), self.client_address)


@contextlib.contextmanager
def loopback_dns() -> Iterator[int]:
    """Serve on an ephemeral UDP port of 127.0.0.1; yields the port."""
    server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), _Dns)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
