"""A minimal authoritative DNS responder on loopback UDP, for HAProxy's `resolvers`.

It answers A queries for one name with a list of addresses the test can change,
like the records of a Kubernetes headless Service as pods come and go.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

from iofleet.processes import free_port


def _question_end(packet: bytes) -> int:
    index = 12
    while packet[index] != 0:
        index += packet[index] + 1
    return index + 1 + 4  # the root label, then QTYPE and QCLASS


def _labels(packet: bytes) -> str:
    index, parts = 12, []
    while packet[index] != 0:
        length = packet[index]
        parts.append(packet[index + 1 : index + 1 + length].decode().lower())
        index += length + 1
    return ".".join(parts)


@dataclass
class DnsStub(asyncio.DatagramProtocol):
    name: str
    addresses: list[str]
    port: int = field(default_factory=free_port)
    ttl: int = 1
    queries: int = 0
    _transport: asyncio.DatagramTransport | None = None

    async def start(self) -> DnsStub:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", self.port)
        )
        self._transport = transport
        return self

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        self.queries += 1
        (query_id,) = struct.unpack("!H", data[:2])
        end = _question_end(data)
        qtype = struct.unpack("!H", data[end - 4 : end - 2])[0]
        known = _labels(data) == self.name
        answers = self.addresses if known and qtype == 1 else []
        rcode = 0 if known else 3  # NXDOMAIN for any other name
        header = struct.pack("!HHHHHH", query_id, 0x8400 | rcode, 1, len(answers), 0, 0)
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, 1, 1, self.ttl, 4) + socket.inet_aton(address)
            for address in answers
        )
        self._transport.sendto(header + data[12:end] + records, addr)
