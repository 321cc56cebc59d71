"""Loopback helpers: free ports for simulators, tests and side-by-side demos."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_port(kind: str = "tcp", host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` for ``kind`` ('tcp' or 'udp') right now."""
    return free_ports([kind], host)[0]


def free_ports(kinds: list[str], host: str = "127.0.0.1") -> list[int]:
    """One free port per entry of ``kinds``, all different: every socket stays bound until
    all are chosen (asked one at a time, the kernel may hand out the same port twice)."""
    with ExitStack() as held:
        ports = []
        for kind in kinds:
            s = held.enter_context(
                socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
            )
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports
