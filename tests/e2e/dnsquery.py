"""A DNS query over UDP, standard library only: enough to ask the cluster's DNS one question and
read the answer's code and addresses (the e2e tests have no resolver library)."""

from __future__ import annotations

import random
import socket
import struct
from typing import NamedTuple

A = 1
NOERROR, NXDOMAIN, REFUSED = 0, 3, 5


class Answer(NamedTuple):
    rcode: int
    addresses: list[str]  # the A records


def query(server: str, name: str, port: int = 53, timeout: float = 3) -> Answer:
    """Ask ``server`` for the A records of ``name`` (recursion desired, as a stub resolver asks)."""
    ident = random.randrange(1 << 16)
    question = _encode(name) + struct.pack(">HH", A, 1)
    message = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message, (server, port))
        while True:
            reply = sock.recv(4096)
            if struct.unpack(">H", reply[:2])[0] == ident:
                break
    flags, questions, answers = struct.unpack(">HHH", reply[2:8])
    offset = 12
    for _ in range(questions):
        offset = _skip_name(reply, offset) + 4
    addresses = []
    for _ in range(answers):
        offset = _skip_name(reply, offset)
        kind, _class, _ttl, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if kind == A:
            addresses.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return Answer(flags & 0x0F, addresses)


def _encode(name: str) -> bytes:
    labels = [label.encode() for label in name.rstrip(".").split(".")]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def _skip_name(message: bytes, offset: int) -> int:
    """The offset after the (possibly compressed) name at ``offset``."""
    while True:
        length = message[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:  # a pointer ends the name
            return offset + 2
        offset += 1 + length
