"""The least CPU a poll costs a Python process: the floor under `benchmarks/versus.py`.

An asyncio process that polls the versus farm as `aidc run` does, every device every
``poll_s``, woken on aidc's own grid of the loop's clock (`poll_grid_s`), and does nothing
else: it sends a request made once and counts the answers, decoding no value. No store, no
model, no rules, no web server. What it costs a poll, no Python collector of this design can
cost less, whatever it leaves out. Three kinds:

- ``snmp``: the GetRequest of the 12 OIDs (encoded once, as the SNMP collector encodes it), to
  each agent from one UDP socket; every answer waiting is read at each wake, as the SNMP
  collector reads its shared socket.
- ``modbus``: the FC04 request of 50 input registers, on one TCP connection a device
  (an asyncio Protocol); answers counted by their length.
- ``pymodbus``: the same read through pymodbus' ``AsyncModbusTcpClient``, the library the
  Modbus collector is built on; pymodbus decodes the answer into registers, not values.

``python -m benchmarks.floors KIND POLL_S REPORT PORT...``: writes the number of polls
answered so far and its CPU seconds into REPORT at each step, until terminated.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyasn1.codec.ber import encoder
from pyasn1.type import univ

from aidc.runtime import poll_grid_s, poll_wake_at
from benchmarks.collectors import HOST, SNMP_OIDS, UPS
from collectors.snmp import get_request

MODBUS_REGISTERS = 50
MODBUS_REQUEST = struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 0, MODBUS_REGISTERS)  # FC04 from 0
MODBUS_ANSWER_BYTES = 9 + 2 * MODBUS_REGISTERS  # MBAP header 7, function 1, byte count 1


class Polls:
    answered = 0


async def on_grid(ports: list[int], poll_s: float, send: Callable[[list[int]], None],
                  report: Path) -> None:
    """``send(ports due)`` at each step of aidc's grid, each port once every ``poll_s``; then
    the polls answered so far and the process's CPU seconds into ``report``."""
    loop = asyncio.get_running_loop()
    grid_s = poll_grid_s(len(ports), poll_s)
    steps = round(poll_s / grid_s)
    due = [ports[i::steps] for i in range(steps)]
    step, wake_at = 0, poll_wake_at(loop.time(), grid_s)
    written = report.with_suffix(".new")
    while True:
        await asyncio.sleep(wake_at - loop.time())
        send(due[step % steps])
        step, wake_at = step + 1, wake_at + grid_s
        written.write_text(f"{Polls.answered} {time.process_time()}")
        written.replace(report)  # whole: a reader never sees half of it


async def snmp(ports: list[int], poll_s: float, report: Path) -> None:
    oids = [encoder.encode(univ.ObjectIdentifier(f"{UPS}.{suffix}")) for suffix in SNMP_OIDS]
    request = get_request(b"public", 1, oids)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((HOST, 0))

    def read() -> None:
        while True:
            try:
                sock.recv(65_535)
            except BlockingIOError:
                return
            Polls.answered += 1

    asyncio.get_running_loop().add_reader(sock.fileno(), read)
    await on_grid(ports, poll_s, lambda due: [sock.sendto(request, (HOST, p)) for p in due],
                  report)


class ModbusAnswers(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        while self.received >= MODBUS_ANSWER_BYTES:
            self.received -= MODBUS_ANSWER_BYTES
            Polls.answered += 1


async def modbus(ports: list[int], poll_s: float, report: Path) -> None:
    loop = asyncio.get_running_loop()
    transports = {p: (await loop.create_connection(ModbusAnswers, HOST, p))[0] for p in ports}
    await on_grid(ports, poll_s, lambda due: [transports[p].write(MODBUS_REQUEST) for p in due],
                  report)


async def pymodbus(ports: list[int], poll_s: float, report: Path) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    clients = {}
    for p in ports:
        clients[p] = AsyncModbusTcpClient(HOST, port=p, timeout=2, retries=0, reconnect_delay=0)
        await clients[p].connect()

    async def read(client: AsyncModbusTcpClient) -> None:
        answer = await client.read_input_registers(0, count=MODBUS_REGISTERS, device_id=1)
        Polls.answered += len(answer.registers) == MODBUS_REGISTERS

    tasks: set[asyncio.Task] = set()  # held until done: the loop keeps only weak references

    def send(due: list[int]) -> None:
        for p in due:
            task = asyncio.ensure_future(read(clients[p]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    await on_grid(ports, poll_s, send, report)


if __name__ == "__main__":
    kind, poll_s, report, *port_args = sys.argv[1:]
    poll = {"snmp": snmp, "modbus": modbus, "pymodbus": pymodbus}[kind]
    asyncio.run(poll([int(p) for p in port_args], float(poll_s), Path(report)))
