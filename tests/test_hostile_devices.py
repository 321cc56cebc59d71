"""Devices that answer garbage: a proxy between each collector and its real simulator
mangles the answers (bytes flipped, cut short, padded, replaced by noise, dropped, or the
connection closed), with a fixed seed. Every read must end as readings, as
``DeviceUnreachable``, or cut by the deadline the runtime gives each poll: never another
exception, never a read that outlives its cut, and no file descriptor left behind once the
collector is closed. (Garbage that still parses costs SNMP retransmissions and rounds: with a
0.3 s timeout, 1 read in 60 took 2.4-3.9 s here, which only the runtime's deadline bounds.)
The simulators run on their own event loop, in a thread, as a device is another machine
(pyasn1 took up to 2 s to encode one large GETBULK answer, which on the collector's loop held
its deadline back), and their object graphs are frozen out of the garbage collector's walks
(a full collection over the OPC-UA address spaces of earlier cases paused the read 2 s).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading

import pytest

from aidc.core.config import load_site
from aidc.runtime import bounded
from collectors import DeviceUnreachable, make_collector
from simulators.site import SimulatedSite, on_free_ports
from tests.conftest import ROOT

READS = 40
TIMEOUT_S = 0.3


class SimulatorsInThread:
    """The site's simulators on an event loop of their own, in a thread."""

    def __init__(self, site):
        self.simulated, self.loop = SimulatedSite(site), asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.simulated.start(), self.loop).result(60)
        gc.collect()
        gc.freeze()  # the simulators' object graphs (OPC-UA address spaces): out of GC's walks

    def __exit__(self, *_) -> None:
        gc.unfreeze()
        asyncio.run_coroutine_threadsafe(self.simulated.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Mangler:
    """What a hostile device does to one answer; counts what it sent."""

    def __init__(self, seed: int, share: float):
        self.rng, self.share, self.frames = random.Random(seed), share, 0

    def __call__(self, data: bytes) -> bytes | None:
        """The mangled answer, b"" to drop it, None to close the connection."""
        self.frames += 1
        r, n = self.rng, len(data)
        if r.random() >= self.share:
            return data  # some pass, so sessions get far enough to be mangled later
        way = r.randrange(1, 8)
        if way == 1:  # flip bytes
            out = bytearray(data)
            for _ in range(r.randint(1, 4)):
                if out:
                    out[r.randrange(len(out))] = r.randrange(256)
            return bytes(out)
        if way == 2:
            return data[: r.randrange(max(n, 1))]  # cut short
        if way == 3:
            return data + r.randbytes(r.randint(1, 64))  # padded
        if way == 4:
            return r.randbytes(r.randint(1, 300))  # noise
        if way == 5:
            return b""  # never answered
        if way == 6 and n > 8:  # a length field lying: bytes 4-7 hold one in MBAP, BER, UA
            out = bytearray(data)
            out[r.randrange(4, 8)] = 0xFF
            return bytes(out)
        return None  # connection closed


async def tcp_proxy(upstream_port: int, mangle: Mangler) -> asyncio.Server:
    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_w.close()
            return

        async def pump(src, dst, hostile: bool) -> None:
            try:
                while data := await src.read(65536):
                    out = mangle(data) if hostile else data
                    if out is None:
                        break
                    dst.write(out)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                client_w.close()
                up_w.close()

        await asyncio.gather(pump(client_r, up_w, False), pump(up_r, client_w, True))

    return await asyncio.start_server(serve, "127.0.0.1", 0)


class UdpProxy(asyncio.DatagramProtocol):
    """Each request forwarded from a socket of its own; each answer mangled back."""

    def __init__(self, upstream_port: int, mangle: Mangler):
        self.upstream, self.mangle = ("127.0.0.1", upstream_port), mangle

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, client):
        proxy = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, answer, _):
                out = proxy.mangle(answer)
                if out:
                    proxy.transport.sendto(out, client)

        loop = asyncio.get_running_loop()

        async def forward():
            t, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.upstream)
            t.sendto(data)
            await asyncio.sleep(2 * TIMEOUT_S)
            t.close()

        asyncio.ensure_future(forward())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# an OPC-UA session takes some ten exchanges to open: mangle fewer, or none would open
@pytest.mark.parametrize(("device_id", "seed", "share"), [
    ("cdu-1", 1, 0.5), ("rect-a", 2, 0.5), ("pdu-a01-a", 3, 0.5), ("ups-b", 4, 0.5),
    ("sc-a", 5, 0.1)])
def test_garbage_from_a_device_is_a_bad_poll_never_a_crash_or_a_leak(device_id, seed, share,
                                                                       reliability):
    site = on_free_ports(load_site(ROOT / "site_configs" / "demo.yaml"))
    device = site.device(device_id)
    mangle = Mangler(seed, share)
    outcomes: dict[str, int] = {}

    async def run() -> tuple[int, int]:
        if device.protocol == "snmp":
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: UdpProxy(device.port, mangle), local_addr=("127.0.0.1", 0))
            port, closing = transport.get_extra_info("sockname")[1], transport
        else:
            server = await tcp_proxy(device.port, mangle)
            port, closing = server.sockets[0].getsockname()[1], server
        timeout_s = TIMEOUT_S * (3 if device.protocol == "opcua" else 1)
        collector = make_collector(device.model_copy(update={"port": port}), timeout_s, 1.0)
        fds_before = open_fds()
        crashes = 0
        try:
            deadline_s = max(2 * timeout_s, 1.0)  # the runtime's, for a device alone
            loop = asyncio.get_running_loop()
            for _ in range(READS):
                started = loop.time()
                try:
                    readings = await bounded(collector.read(), deadline_s)
                    outcome = f"{sum(r.quality.value == 'good' for r in readings)} good"
                except DeviceUnreachable:
                    outcome = "unreachable"
                except TimeoutError:
                    outcome = "cut at the deadline"
                except Exception as e:  # noqa: BLE001 (what must never happen)
                    outcome, crashes = f"crash {type(e).__name__}: {e}", crashes + 1
                if loop.time() - started > deadline_s + 1.0:  # the cut did not hold
                    outcome, crashes = "hung", crashes + 1
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        finally:
            await collector.close()
            # the proxy's side of each connection closes a few loop turns later, and a UDP
            # request's socket after its wait: wait for the count, not for a time
            for _ in range(100):
                if open_fds() <= fds_before:
                    break
                await asyncio.sleep(0.05)
            fd_growth = open_fds() - fds_before
            closing.close()
        return crashes, fd_growth

    with SimulatorsInThread(site):
        crashes, fd_growth = asyncio.run(run())
    reliability.count("devices: mangled answers (Modbus, SNMP, OPC-UA)", "frames",
                      mangle.frames, crashes=crashes, fd_growth=max(fd_growth, 0))
    assert crashes == 0, outcomes
    assert fd_growth <= 0, (fd_growth, outcomes)
    assert mangle.frames >= READS // 2, outcomes  # the garbage did reach the collector
