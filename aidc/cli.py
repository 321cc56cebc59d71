"""`aidc`: check a site file, run the system, or run the whole simulated demo site."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aidc.config import ConfigError, Site, Webhook, load_site
from collectors.profiles import ProfileError, load_profile

DEMO_SITE = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"
EXIT_USAGE = 2


def _load(path: str) -> Site:
    """A validated site whose every profile loads; one clear line and exit 2 otherwise."""
    try:
        site = load_site(path)
        for d in site.devices:
            profile = load_profile(d.profile)
            if profile.protocol != d.protocol or profile.kind != d.kind:
                raise ConfigError(
                    path, None, f"devices.{d.id}.profile",
                    f"profile {d.profile} is a {profile.kind} over {profile.protocol}, "
                    f"but the device is a {d.kind} over {d.protocol}",
                )
    except ConfigError as e:
        sys.exit(_fail(str(e)))
    except ProfileError as e:
        sys.exit(_fail(f"{path}: {e}"))
    return site


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    for noisy in ("asyncua", "pymodbus", "werkzeug", "pysnmp", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def cmd_check(args: argparse.Namespace) -> int:
    from aidc.topology import Topology

    site = _load(args.file)
    print(f"{args.file}: ok")
    print(Topology(site).summary())
    return 0


async def _serve(site: Site, data_dir: Path, host: str, web_port: int, simulate: bool) -> None:
    from aidc.api import SiteAPI
    from aidc.runtime import Runtime
    from aidc.web import WebServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    simulated = None
    if simulate:
        from simulators.site import SimulatedSite

        simulated = SimulatedSite(site)
        await simulated.start()
    runtime = Runtime(site, data_dir)
    web = WebServer(SiteAPI(runtime), host, web_port)
    web.start()
    print(f"aidc {'demo ' if simulate else ''}running: {web.url}  (API: {web.url}api/v1/site)"
          "  Ctrl-C stops.", flush=True)
    try:
        await runtime.run(stop)
    finally:
        web.stop()
        if simulated:
            await simulated.stop()
        print("aidc stopped.", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    _logging(args.verbose)
    site = _load(args.site)
    asyncio.run(_serve(site, Path(args.data_dir), args.host, args.web_port, simulate=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from simulators.site import relocate

    _logging(args.verbose)
    site = _load(args.site)
    if args.port_offset:
        site = relocate(site, lambda d: d.port + args.port_offset)
    if args.webhook:
        hooks = [*site.alerts.webhooks, Webhook(name="demo", url=args.webhook)]
        site = site.model_copy(update={"alerts": site.alerts.model_copy(update={"webhooks": hooks})})
    asyncio.run(_serve(site, Path(args.data_dir), args.host, args.web_port, simulate=True))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aidc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="validate a site file and print its topology")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)

    for name, helptext in (("run", "collect, model, alert and serve the web app"),
                           ("demo", "the same, on a simulated site on 127.0.0.1")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("--site", default=str(DEMO_SITE) if name == "demo" else None,
                       required=name == "run", help="site file")
        r.add_argument("--data-dir", default=f"data/{name}", help="embedded store, spool, alerts")
        r.add_argument("--host", default="127.0.0.1", help="web app and API address")
        r.add_argument("--web-port", type=int, default=8050, help="web app and API port")
        r.add_argument("-v", "--verbose", action="store_true")
        r.set_defaults(func=cmd_run if name == "run" else cmd_demo)
        if name == "demo":
            r.add_argument("--port-offset", type=int, default=0,
                           help="add to every simulated device's port (to run two demos)")
            r.add_argument("--webhook", help="also send alert webhooks to this URL")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
