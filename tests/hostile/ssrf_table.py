"""The SSRF spelling table: hosts the default egress policy must deny, however they are written.

Each row is a host as it goes into a definition's host position (a URL's authority, a
``host:port`` target); IPv6 hosts are written without brackets and get them from the kind's
target syntax. Every address here is denied by the default policy and none is ever dialled: the
tests run through the guarded connector, which refuses anything but loopback before a socket
exists.
"""

from __future__ import annotations


def full_width(text: str) -> str:
    """``text`` with ASCII letters, digits and punctuation in their full-width forms (U+FF01...)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


SPELLINGS: dict[str, str] = {
    # AWS, GCP, Azure (and Oracle's current) metadata service
    "metadata": "169.254.169.254",
    "decimal": "2852039166",
    "hex": "0xa9fea9fe",
    "hex upper": "0XA9FEA9FE",
    "octal": "0251.0376.0251.0376",
    "octal, zero padded": "00251.000376.0251.0376",
    "mixed bases": "0xa9.0376.169.254",
    "short form a.b.c": "169.254.43518",
    "short form a.b": "169.16689662",
    "trailing dot": "169.254.169.254.",
    "IPv4-mapped": "::ffff:169.254.169.254",
    "IPv4-mapped hex": "::ffff:a9fe:a9fe",
    "IPv4-mapped expanded": "0:0:0:0:0:ffff:a9fe:a9fe",
    "IPv4-compatible": "::169.254.169.254",
    "NAT64": "64:ff9b::a9fe:a9fe",
    "NAT64 dotted": "64:ff9b::169.254.169.254",
    "NAT64 local use": "64:ff9b:1::a9fe:a9fe",
    "6to4": "2002:a9fe:a9fe::1",
    "Teredo": "2001:0:4136:e378:8000:63bf:5601:5601",
    "link-local IPv4": "169.254.0.1",
    "link-local IPv6": "fe80::1",
    "link-local with zone": "fe80::1%eth0",
    "link-local with numeric zone": "fe80::a9fe:a9fe%1",
    "AWS IPv6 metadata": "fd00:ec2::254",
    "Alibaba metadata": "100.100.100.200",
    "Oracle legacy metadata": "192.0.0.192",
    "this network (reaches localhost)": "0.0.0.0",
    "this network, decimal": "0",
    "full-width digits": full_width("169.254.169.254"),
    "ideographic full stops": "169\u3002254\u3002169\u3002254",
    "full-width hex": full_width("0xa9fea9fe"),
}
