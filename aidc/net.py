"""Loopback helpers: free ports for simulators, tests and side-by-side demos."""

from __future__ import annotations

import socket


def free_port(kind: str = "tcp", host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` for ``kind`` ('tcp' or 'udp') right now."""
    sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, sock_type) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
