"""Loopback helpers: free ports for simulators, tests and side-by-side demos."""

from __future__ import annotations

import random
import socket
import threading
from contextlib import ExitStack
from functools import cache
from pathlib import Path

_HANDED_OUT: set[tuple[str, int]] = set()  # never the same port twice in one process
_LOCK = threading.Lock()


@cache
def _candidates() -> list[int]:
    """Ports outside the range the kernel gives outgoing connections (ip_local_port_range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return [p for p in range(10_000, 65_536) if not low <= p <= high]


def free_port(kind: str = "tcp", host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` for ``kind`` ('tcp' or 'udp') right now."""
    return free_ports([kind], host)[0]


def free_ports(kinds: list[str], host: str = "127.0.0.1") -> list[int]:
    """One free port per entry of ``kinds``, all different and never handed out before in
    this process. They are taken below the kernel's ephemeral range, so that no outgoing
    connection (a client socket of this or another process) takes one before its server
    binds it; every socket stays bound until all are chosen."""
    candidates = _candidates()
    with _LOCK, ExitStack() as held:
        ports: list[int] = []
        for kind in kinds:
            while True:
                port = random.choice(candidates)
                if (kind, port) in _HANDED_OUT or port in ports:
                    continue
                family = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
                s = held.enter_context(socket.socket(socket.AF_INET, family))
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                ports.append(port)
                break
        _HANDED_OUT.update(zip(kinds, ports))
        return ports


def free_offset(ports: list[tuple[str, int]], host: str = "127.0.0.1") -> int:
    """An offset that moves every ``(kind, port)`` to a port that is free now, below the
    kernel's ephemeral range, and never handed out before in this process (`aidc demo
    --port-offset` for a demo run beside others). The moved ports count as handed out."""
    candidates = set(_candidates())
    top = max(p for _, p in ports)
    with _LOCK:
        for _ in range(1000):
            offset = random.randrange(-min(p for _, p in ports) + 10_000, 65_536 - top)
            moved = [(kind, p + offset) for kind, p in ports]
            if all(p in candidates and (kind, p) not in _HANDED_OUT and _bindable(kind, p, host)
                   for kind, p in moved):
                _HANDED_OUT.update(moved)
                return offset
    raise RuntimeError("no free block of ports for the offset")


def _bindable(kind: str, port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False
