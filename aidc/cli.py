"""`aidc`: check a site file, run the system, or run the whole simulated demo site."""

from __future__ import annotations

import argparse
import difflib
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from aidc.core.config import ConfigError, Site, Webhook, load_site
from alerts.rules import rule_problems
from collectors.profiles import ProfileError, load_profile

DEMO_SITE = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"
EXIT_USAGE = 2
# A young collection each 50,000 allocations, not 700: a poll's samples live one poll
# interval, and with the defaults they reached the old generation, whose full collections
# (about a million objects, collecting nothing) held the event loop 210-250 ms every 1.5 s
# at 2,000 racks; with these, none in two minutes.
RUN_GC_THRESHOLDS = (50_000, 20, 100)
MIN_PASSWORD = 12  # characters (NIST SP 800-63B asks 8 at least; a console that acts, more)


def _load(path: str) -> Site:
    """A validated site whose every profile loads and whose rules the rule pack has; one
    clear line and exit 2 otherwise.
    Reading it makes no reference cycles: the cyclic garbage collector is held off meanwhile
    (at 10,000 racks, some 700,000 objects, it walked them again and again)."""
    gc.disable()
    try:
        return load_site(path, check=lambda site: _profile_problems(site) or
                         rule_problems(site) or _rule_metric_problems(site))
    except ConfigError as e:
        sys.exit(_fail(str(e)))
    finally:
        gc.enable()


def _profile_problems(site: Site) -> list[tuple[tuple, str]]:
    return [(("devices", i, "profile"), message) for i, d in enumerate(site.devices)
            if (message := _profile_problem(d))]


def _rule_metric_problems(site: Site) -> list[tuple[tuple, str]]:
    """A rule of the site's own over a metric that no profile of its kind at the site reads,
    or the model does not derive (a typo there would be a rule that never fires)."""
    own = {name: rule for name, rule in site.alerts.rules.items() if rule.metric is not None}
    if not own:
        return []
    from aidc.core.derive import RACK_FIELDS, ROOM_FIELDS, SITE_FIELDS  # only for such rules

    read = {"rack": set(RACK_FIELDS), "room": set(ROOM_FIELDS), "site": set(SITE_FIELDS)}
    for kind, profile in {(d.kind, d.profile) for d in site.devices}:
        read.setdefault(kind, set()).update(p.metric for p in load_profile(profile).points)
    out = []
    for name, rule in own.items():
        metrics = read.get(rule.kind or "", set())
        if rule.metric not in metrics:
            near = difflib.get_close_matches(rule.metric, metrics, 1)
            out.append((("alerts", "rules", name, "metric"), f"no {rule.kind} at this site has "
                        f"'{rule.metric}'" + (f" (did you mean '{near[0]}'?)" if near else "")))
    return out


def _profile_problem(device) -> str | None:
    """Why a device's profile does not load or does not fit it, or None."""
    try:
        profile = load_profile(device.profile)
    except ProfileError as e:
        return str(e)
    if profile.protocol != device.protocol or profile.kind != device.kind:
        return (f"profile {device.profile} is a {profile.kind} over {profile.protocol}, "
                f"but the device is a {device.kind} over {device.protocol}")
    return None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    # our own events carry every reason (DeviceUnreachable says why); the libraries' lines
    # repeat them in other formats, and httpx's would show URLs with query strings
    for noisy in ("pymodbus", "waitress", "pysnmp", "httpx", "asyncua", "apprise"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.CRITICAL)


def cmd_check(args: argparse.Namespace) -> int:
    from aidc.core.topology import Topology

    site = _load(args.file)
    print(f"{args.file}: ok")
    print(Topology(site).summary())
    return 0


async def _serve(site: Site, data_dir: Path, host: str, web_port: int, simulate: bool,
                 role: str = "all", shard: tuple[int, int] = (1, 1)) -> int:
    import asyncio  # here and where it runs: the commands that answer and end skip its 60 ms

    stop = asyncio.Event()  # Ctrl-C from here on stops the runtime cleanly
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    from aidc.runtime import Runtime

    simulated = None
    if simulate:
        from simulators.site import SimulatedSite

        simulated = SimulatedSite(site)
        await simulated.start()
    _raise_open_files_limit(site)
    runtime = Runtime(site, data_dir, role=role, shard=shard)
    gc.freeze()  # the site, its model, topology and health live as long as the process
    gc.set_threshold(*RUN_GC_THRESHOLDS)
    token = site.web.api_token.get_secret_value() if site.web.api_token else None
    if token is None and simulate:
        token = _demo_token(data_dir)
    # the runtime first: its first tick comes a tick interval after its start at the latest,
    # and the web (Dash and plotly imported, the console built: 0.6-0.7 s) is made meanwhile
    running = asyncio.create_task(runtime.run(stop))
    try:
        web = await asyncio.to_thread(_web, runtime, simulated, host, web_port, token, role)
    except OSError as e:  # the port taken, the address not this host's
        stop.set()
        await running
        print(f"error: cannot serve on {host}:{web_port}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    if role == "collect":
        banner = [f"aidc collector {shard[0]}/{shard[1]} polling {len(runtime.polled)} of "
                  + f"{len(site.devices)} devices: {web.url}healthz  Ctrl-C stops."]
    else:
        banner = [f"aidc {'demo ' if simulate else ''}{'core ' if role == 'core' else ''}"
                  + f"running: {web.url}  (API: {web.url}api/v1/site)  Ctrl-C stops."]
    if token and simulate and not site.web.api_token:
        banner.append(f"write actions (alert ack) take the bearer token in {data_dir / 'api-token'}")
    if simulate and (data_dir / "operator-password").exists():
        banner.append(f"sign in as 'operator' with the password in {data_dir / 'operator-password'}")
    if not stop.is_set():  # Ctrl-C while the web was made: the runtime stops, it is not running
        print("\n".join(banner), flush=True)
    try:
        await running
    finally:
        web.stop()
        if simulated:
            await simulated.stop()
        print("aidc stopped.", flush=True)
    return 0


def _web(runtime, simulated, host: str, port: int, token: str | None, role: str):
    """The web server of a runtime, serving (the console too unless a collector's)."""
    from aidc.api import SiteAPI
    from aidc.web import WebServer

    web = WebServer(SiteAPI(runtime), host, port, token, console=role != "collect")
    if simulated:
        from simulators.control import register_fault_routes

        register_fault_routes(web.flask, simulated, web.auth)
    web.start()
    return web


def _raise_open_files_limit(site: Site) -> None:
    """Every Modbus and OPC-UA device holds a TCP connection, every SNMPv3 device a socket
    (SNMPv2c devices share one): take the hard limit on open files, as servers do (the usual
    soft limit is 1,024), and say so in one line if the site needs more than that."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    connections = sum(d.protocol != "snmp" or d.snmp.version != "2c" for d in site.devices)
    if connections + 100 > wanted:  # the store, spool, web clients and webhooks need some
        logging.getLogger("aidc.runtime").warning(
            "event=open_files_short connections=%d limit=%d: raise it (ulimit -n, systemd "
            "LimitNOFILE), or devices past it will read as down", connections, wanted)


def _demo_token(data_dir: Path) -> str:
    """A random token for the demo's write actions, kept in a file only its owner reads."""
    import secrets

    from aidc.core.files import private_file

    path = data_dir / "api-token"
    if not path.exists():
        private_file(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def _demo_operator(data_dir: Path):
    """The demo's operator, whose random password is kept in a file only its owner reads."""
    import secrets

    from aidc.auth import hash_password
    from aidc.core.config import User
    from aidc.core.files import private_file

    path = data_dir / "operator-password"
    if not path.exists():
        private_file(path, secrets.token_urlsafe(12) + "\n")
    return User(name="operator", role="operator",
                password_hash=hash_password(path.read_text().strip()))


def _serve_until_stopped(site: Site, args: argparse.Namespace, simulate: bool, **role) -> int:
    import asyncio

    from aidc.core.store import StoreUnavailable

    try:
        return asyncio.run(_serve(site, Path(args.data_dir), args.host, args.web_port, simulate,
                                  **role))
    except StoreUnavailable as e:  # its file, at the start: locked past the timeout, disk full
        return _fail(str(e))


def _shard(text: str) -> tuple[int, int]:
    """``i/n``: the i-th of n collector shards (1 <= i <= n)."""
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise argparse.ArgumentTypeError(f"{text!r} is not i/n with 1 <= i <= n, as 2/3")
    return int(i), int(n)


def cmd_run(args: argparse.Namespace) -> int:
    _logging(args.verbose)
    if args.shard and args.role != "collect":
        return _fail("--shard says which devices a collector polls: give it with --role collect")
    site = _load(args.site)
    if args.role != "all" and site.store.backend != "influxdb":
        return _fail(f"--role {args.role}: collectors and the core share the site's store, "
                     f"which must be InfluxDB (store: backend: influxdb) in {args.site}")
    shard = args.shard or (1, 1)
    if args.data_dir is None:  # a host may run a core and collectors: each its own spool
        args.data_dir = {"all": "data/run", "core": "data/core"}.get(
            args.role, f"data/collect-{shard[0]}-of-{shard[1]}")
    if args.web_port is None:  # and its own port
        args.web_port = 8050 + (shard[0] if args.role == "collect" else 0)
    return _serve_until_stopped(site, args, simulate=False, role=args.role, shard=shard)


def cmd_demo(args: argparse.Namespace) -> int:
    from simulators.site import relocate

    _logging(args.verbose)
    site = _load(args.site)
    if args.port_offset:
        site = relocate(site, lambda d: d.port + args.port_offset)
    if args.webhook_secret and not args.webhook:
        return _fail("--webhook-secret signs the --webhook: give both")
    if args.webhook:
        secret = _secret_arg(args.webhook_secret) if args.webhook_secret else None
        hooks = [*site.alerts.webhooks, Webhook(name="demo", url=args.webhook, secret=secret)]
        site = site.model_copy(update={"alerts": site.alerts.model_copy(update={"webhooks": hooks})})
    if site.web.external_url is None:  # notifications link to this demo's console
        web = site.web.model_copy(update={"external_url": f"http://{args.host}:{args.web_port}"})
        site = site.model_copy(update={"web": web})
    if not (site.web.users or site.web.users_file):  # anyone reads; an operator signs in to act
        web = site.web.model_copy(update={"users": [_demo_operator(Path(args.data_dir))],
                                          "anonymous_read": True})
        site = site.model_copy(update={"web": web})
    return _serve_until_stopped(site, args, simulate=True)


def cmd_farm(args: argparse.Namespace) -> int:
    """The site's devices, simulated on 127.0.0.1 over their protocols, in a process of their
    own: an `aidc run` of the same site file polls them as it would a real site, and its CPU
    and memory are its own (`aidc demo` simulates in its own process)."""
    import asyncio

    from simulators.site import relocate

    _logging(args.verbose)
    site = _load(args.site)
    if args.port_offset:
        site = relocate(site, lambda d: d.port + args.port_offset)
    try:
        asyncio.run(_farm(site, args.snmpd))
    except RuntimeError as e:  # no snmpd
        return _fail(str(e))
    return 0


async def _farm(site: Site, snmpd: bool) -> None:
    import asyncio
    import tempfile

    from simulators.site import SimulatedSite
    from simulators.snmpd import SnmpdFarm

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    _raise_open_files_limit(site)
    by_snmpd = [d for d in site.devices
                if snmpd and d.protocol == "snmp" and d.snmp.version == "2c"]
    simulated = SimulatedSite(site, served_elsewhere={d.id for d in by_snmpd})
    simulated.physics.step()  # snmpd serves the values of the first step
    with tempfile.TemporaryDirectory(prefix="aidc-farm-") as work:
        agents = SnmpdFarm(by_snmpd, simulated.physics.values, Path(work))
        agents.start()
        await simulated.start()
        gc.freeze()
        print(f"aidc farm: {len(site.devices)} devices of {site.site} answering on 127.0.0.1"
              f" ({len(by_snmpd)} by {len(agents.agents)} snmpd).  Ctrl-C stops.", flush=True)
        try:
            await stop.wait()
        finally:
            await simulated.stop()
            agents.stop()
            print("aidc farm stopped.", flush=True)


def _secret_arg(value: str, option: str = "--webhook-secret") -> str:
    """``env:NAME`` or ``file:PATH``: a secret typed on the command line would show in ``ps``."""
    kind, _, name = value.partition(":")
    if kind == "env" and name in os.environ:
        return os.environ[name]
    if kind == "file":
        try:
            return Path(name).expanduser().read_text().strip()
        except OSError as e:
            sys.exit(_fail(f"{option}: cannot read {name}: {e.strerror}"))
    if kind == "env":
        sys.exit(_fail(f"{option}: environment variable {name} is not set"))
    sys.exit(_fail(f"{option} takes env:NAME or file:PATH, never the secret itself "
                   "(a command line shows in ps)"))


DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d``."""
    try:
        seconds = float(text[:-1]) * DURATION[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 30m, 2h or 1d") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return seconds


def cmd_silence(args: argparse.Namespace) -> int:
    """Silences through the running app's API (writes need its token)."""
    import httpx

    base = args.url.rstrip("/") + "/api/v1/silences"
    headers = {}
    if args.action != "list":
        headers["Authorization"] = "Bearer " + _secret_arg(args.token or "", "--token")
    try:
        if args.action == "add":
            body = {"matchers": args.match, "duration_s": args.duration, "created_by": args.by,
                    "comment": args.comment}  # fmt: skip
            r = httpx.post(base, json=body, headers=headers, timeout=10)
        elif args.action == "expire":
            r = httpx.request("DELETE", f"{base}/{args.id}", json={"by": args.by},
                              headers=headers, timeout=10)  # fmt: skip
        else:
            r = httpx.get(base, timeout=10)
    except httpx.HTTPError as e:
        return _fail(f"{args.url}: {type(e).__name__}: is `aidc run` (or demo) serving there?")
    if r.status_code >= 400:
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text[:200]
        return _fail(f"{r.status_code}: {message}")
    silences = r.json() if args.action == "list" else [r.json()]
    for s in silences:
        print(f"{s['id']}  {s['state']:<8} until {s['ends_at']}  {' '.join(s['matchers'])}  "
              f"by {s['created_by']}: {s['comment']}"
              + (f" (expired by {s['expired_by']})" if s["expired_by"] else ""))
    return 0


def _store_status(args: argparse.Namespace):
    from aidc.core.snapshot import NoRecentData, status_from_store
    from aidc.core.store import StoreUnavailable, open_store

    site = _load(args.site)
    # The command reads, answers and exits, and makes no reference cycles that need its
    # collector: at 10,000 racks the collections walked the site, the store's rows and the
    # model's records again and again (0.2-0.3 s of a 2.3 s answer).
    gc.disable()
    try:
        store = open_store(site.store, Path(args.data_dir), create=False)
    except StoreUnavailable as e:
        sys.exit(_fail(str(e)))
    try:
        return status_from_store(site, store)
    except (NoRecentData, StoreUnavailable) as e:
        sys.exit(_fail(f"{_where(site, args)}: {e}"))
    finally:
        store.close()


def _where(site: Site, args: argparse.Namespace) -> str:
    """The store a reader reads, for its error messages."""
    if site.store.backend == "influxdb":
        return f"InfluxDB {site.store.url} database {site.store.database}"
    path = Path(site.store.path)
    return str(path if path.is_absolute() else Path(args.data_dir) / path)


def _kw(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def cmd_headroom(args: argparse.Namespace) -> int:
    from aidc.api import pool_json, rack_json, strict_json

    _, status = _store_status(args)
    racks = [
        r for r in status.racks
        if (args.row is None or r.row == args.row)
        and (args.min_kw is None or (r.headroom_kw is not None and r.headroom_kw >= args.min_kw))
    ]
    if args.json:
        print(strict_json({"racks": [rack_json(r) for r in racks],
                           "pools": [pool_json(p) for p in status.pools]}))
        return 0
    print(f"{'rack':<8}{'row':<5}{'power kW':>10}{'peak kW':>10}{'headroom kW':>13}  limiting")
    for r in racks:
        unknown = [k for k, v in r.limits_kw.items() if v is None]
        note = "" if r.complete else f"  (at most: {', '.join(unknown)} unknown)"
        print(f"{r.id:<8}{r.row:<5}{_kw(r.power_kw):>10}{_kw(r.power_kw_peak):>10}"
              f"{_kw(r.headroom_kw):>13}  {r.limiting}{note}")
    print("shared pools (racks draw on them together: do not add the per-rack figures up):")
    for p in status.pools:
        unit = "kW of heat" if p.kind == "loop" else "kW"
        after = (f"with {p.worst_failure} lost" if p.kind != "loop"
                 else f"keeping {p.worst_failure} in reserve") if p.worst_failure else ""
        print(f"  {p.kind} {p.id}: {_kw(p.left_kw)} {unit} left {after} of {_kw(p.capacity_kw)} "
              f"(load {_kw(p.load_kw)}; {_kw(p.left_normal_kw)} with nothing lost) "
              f"for {len(p.racks)} racks")
        if p.kind == "loop":
            print(f"    heat measured by its CDUs {_kw(p.heat_measured_kw)} kW, from its racks "
                  f"(capture x power) {_kw(p.heat_from_racks_kw)} kW; {p.supply_compared} "
                  f"{_kw(p.supply_temp_c)} C against its class limit {p.supply_limit_c:g} C")
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    from aidc.api import strict_json, what_if_json
    from aidc.core.derive import what_if

    model, status = _store_status(args)
    try:
        w = what_if(model, status, args.row, args.racks, args.kw, args.capture, args.feed_kw, args.air_kw)
    except ValueError as e:
        return _fail(str(e))
    if args.json:
        print(strict_json(what_if_json(w)))
        return 0 if w.feasible else 1
    verdict = "fits" if w.feasible else "does NOT fit"
    print(f"{w.racks_requested} racks of {w.rack_kw:g} kW (capture {w.capture_ratio:g}) in row "
          f"{w.row}: {verdict}; {w.racks_fit if w.racks_fit is not None else '?'} fit, "
          f"first to break: {w.first_to_break}")
    for name, n in w.racks_fit_by_limit.items():
        shown = "unknown" if n is None else "no bound" if n == float("inf") else f"{n:g} racks"
        print(f"  {name:<13}{shown}")
    for name in w.not_checked:
        print(f"  {name:<13}not checked (give --{name}-kw)")
    return 0 if w.feasible else 1


def cmd_probe(args: argparse.Namespace) -> int:
    from collectors import DeviceUnreachable, make_collector
    from collectors.profiles import load_profile

    _logging(args.verbose)
    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    site = _load(args.site)
    try:
        device = site.device(args.device)
    except KeyError:
        return _fail(f"no device '{args.device}' in {args.site}")

    if args.byte_orders and device.protocol != "modbus":
        return _fail(f"--byte-orders is for Modbus devices; {device.id} speaks {device.protocol}")

    async def probe() -> int:
        from collectors.modbus import RequestRejected

        collector = make_collector(device, site.timeout_s(device))
        try:
            if args.address is not None:
                words = await collector.read_raw(args.table, args.address, 2)
                _print_orders(f"{args.table} register {args.address}", words, None)
                return 0
            readings = await collector.read()
        except (DeviceUnreachable, RequestRejected) as e:
            return _fail(str(e) if device.id in str(e) else f"{device.id}: {e}")
        finally:
            await collector.close()
        profile = load_profile(device.profile)
        if args.byte_orders:
            points = {p.metric: p for p in profile.points}
            for r in readings:
                p = points[r.metric]
                if p.type in ("float32", "float64") and isinstance(r.raw, list | tuple):
                    _print_orders(r.key, list(r.raw), p.byte_order or profile.byte_order)
            return 0
        print(f"{device.id}: {device.kind} over {device.protocol} at {device.host}:{device.port}, "
              f"profile {profile.name}")
        print(f"{'metric':<34}{'raw':>22}{'value':>14}  quality")
        for r in readings:
            value = "-" if r.value is None else f"{r.value:g}"
            print(f"{r.key:<34}{r.raw!s:>22}{value:>14}  {r.quality}")
        return 0

    import asyncio

    return asyncio.run(probe())


def _print_orders(name: str, words: list[int], configured: str | None) -> None:
    """One float register under all four byte orders: the commissioning question settled."""
    from collectors.modbus import float_under_all_orders

    raw = " ".join(f"{w:04X}" for w in words)
    print(f"{name}: registers {raw}")
    for order, value in float_under_all_orders(words).items():
        mark = "  <- profile" if order == configured else ""
        print(f"  {order}  {value:>16.6g}{mark}")


def cmd_gen_site(args: argparse.Namespace) -> int:
    from aidc.core.sitegen import generate

    try:
        return _write_out(generate(args.racks, args.seed, args.first_port), args.output)
    except ValueError as e:
        return _fail(str(e))


def cmd_hash_password(args: argparse.Namespace) -> int:
    """An argon2 hash for `web.users` (the password from the terminal, asked twice, or the
    first line of standard input): never the password on the command line."""
    import getpass

    from aidc.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            return _fail("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD:
        return _fail(f"a password needs at least {MIN_PASSWORD} characters")
    print(hash_password(password))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from dashboards.grafana import dashboard

    return _write_out(json.dumps(dashboard(_load(args.site)), indent=2) + "\n", args.output)


def _write_out(text: str, output: str | None) -> int:
    """To the ``--output`` file, or to standard output."""
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
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
        by_role = " (default: by --role)" if name == "run" else ""
        r.add_argument("--data-dir", default=None if name == "run" else "data/demo",
                       help="embedded store, spool, alerts" + by_role)
        r.add_argument("--host", default="127.0.0.1", help="web app and API address")
        r.add_argument("--web-port", type=int, default=None if name == "run" else 8050,
                       help="web app and API port (8050; a collector's health: 8050 + I)")
        r.add_argument("-v", "--verbose", action="store_true")
        r.set_defaults(func=cmd_run if name == "run" else cmd_demo)
        if name == "run":
            r.add_argument("--role", choices=("all", "collect", "core"), default="all",
                           help="all in one process, or split: collectors poll their shard "
                           "into InfluxDB, the core models, alerts and serves from it")
            r.add_argument("--shard", type=_shard, metavar="I/N",
                           help="with --role collect: poll the I-th of N shards of the devices")
        else:
            r.add_argument("--port-offset", type=int, default=0,
                           help="add to every simulated device's port (to run two demos)")
            r.add_argument("--webhook", help="also send alert webhooks to this URL")
            r.add_argument("--webhook-secret", metavar="env:NAME|file:PATH",
                           help="sign the --webhook's notifications with this HMAC key")
    f = sub.add_parser("farm", help="only the simulated devices of a site, for `aidc run`")
    f.add_argument("--site", default=str(DEMO_SITE), help="site file")
    f.add_argument("--port-offset", type=int, default=0,
                   help="add to every simulated device's port")
    f.add_argument("--snmpd", action="store_true",
                   help="serve SNMPv2c devices by net-snmp's snmpd (static values; cheap)")
    f.add_argument("-v", "--verbose", action="store_true")
    f.set_defaults(func=cmd_farm)
    for name, helptext in (("headroom", "kW headroom per rack, the binding limit, the pools"),
                           ("whatif", "can a row take N more racks of X kW?")):
        h = sub.add_parser(name, help=helptext)
        h.add_argument("--site", required=True, help="site file (its store is read)")
        h.add_argument("--data-dir", default="data/run", help="where `aidc run` keeps its data")
        h.add_argument("--row", required=name == "whatif")
        h.add_argument("--json", action="store_true")
        if name == "headroom":
            h.add_argument("--min-kw", type=float, help="only racks with at least this headroom")
            h.set_defaults(func=cmd_headroom)
        else:
            h.set_defaults(func=cmd_whatif)
            h.add_argument("--racks", type=int, required=True)
            h.add_argument("--kw", type=float, required=True, help="power of each new rack")
            h.add_argument("--capture", type=float, default=0.85, help="heat to liquid share")
            h.add_argument("--feed-kw", type=float, help="planned weaker feed of a new rack")
            h.add_argument("--air-kw", type=float, help="air allowance of a new rack")

    si = sub.add_parser("silence", help="hold alerts' notifications: add, list, expire")
    si_sub = si.add_subparsers(dest="action", required=True)
    for action, helptext in (("add", "silence the alerts the matchers select, for a time"),
                             ("list", "pending, active and recently expired silences"),
                             ("expire", "end a silence now")):
        a = si_sub.add_parser(action, help=helptext)
        a.add_argument("--url", default="http://127.0.0.1:8050", help="the running app")
        if action != "list":
            a.add_argument("--token", metavar="env:NAME|file:PATH", required=True,
                           help="the app's web.api_token (the demo's: file:data/demo/api-token)")
            a.add_argument("--by", required=True, help="who (kept for the audit)")
        a.set_defaults(func=cmd_silence)
    si_add, si_expire = si_sub.choices["add"], si_sub.choices["expire"]
    si_add.add_argument("--match", action="append", required=True,
                        help="name=value, name!=value, name=~regex, name!~regex (repeatable); "
                             "name is a label or rule")
    si_add.add_argument("--duration", type=_duration_s, required=True, help="e.g. 30m, 2h, 1d")
    si_add.add_argument("--comment", required=True, help="why")
    si_expire.add_argument("id")

    g = sub.add_parser("gen-site", help="write a consistent large site file (for benchmarks)")
    g.add_argument("--racks", type=int, required=True)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--first-port", type=int, default=10_000, help="ports count up from here")
    g.add_argument("-o", "--output", help="file to write (default: standard output)")
    g.set_defaults(func=cmd_gen_site)

    hp = sub.add_parser("hash-password", help="an argon2 hash of a password, for web.users")
    hp.set_defaults(func=cmd_hash_password)

    ex = sub.add_parser("export", help="write a Grafana dashboard for the site's InfluxDB store")
    ex.add_argument("format", choices=["grafana"])
    ex.add_argument("--site", required=True)
    ex.add_argument("-o", "--output", help="file to write (default: standard output)")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("probe", help="read one device once and print every mapped metric")
    pr.add_argument("device")
    pr.add_argument("--site", required=True)
    pr.add_argument("--byte-orders", action="store_true",
                    help="Modbus: show each float point under ABCD, CDAB, BADC and DCBA")
    pr.add_argument("--address", type=int, help="Modbus: probe this zero-based register pair")
    pr.add_argument("--table", choices=("input", "holding"), default="input")
    pr.add_argument("-v", "--verbose", action="store_true")
    pr.set_defaults(func=cmd_probe)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


def console() -> None:
    """The `aidc` command: like main(), and `aidc ... | head` ends quietly. SIGPIPE stays
    ignored, as Python sets it: its default action would end `aidc run` whenever a client
    hung up while the web server answered it. A reader of the output that went away shows as
    BrokenPipeError instead, and the command ends as a shell reports SIGPIPE (141)."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # as the Python docs advise: no second error while exiting
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    # Everything is written and closed. What is left is freeing the site's objects one by
    # one, 0.9 s at 10,000 racks (700,000 objects): the OS takes the memory back at once.
    logging.shutdown()
    os._exit(code or 0)


if __name__ == "__main__":
    console()
