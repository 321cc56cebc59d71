"""`aidc gen-site` writes a consistent site that the simulators serve and the model reads."""

from __future__ import annotations

import time

import pytest

from aidc.cli import main
from aidc.core.config import load_site
from aidc.core.derive import SiteModel
from aidc.core.metrics import Sample
from simulators.physics import SitePhysics
from simulators.site import on_free_ports
from tests.conftest import LiveSite, wait_for


def test_a_generated_site_is_valid_and_sized_for_failover(tmp_path, capsys):
    path = tmp_path / "site.yaml"
    assert main(["gen-site", "--racks", "100", "--seed", "3", "-o", str(path)]) == 0
    site = load_site(path)
    kinds = {k: sum(d.kind == k for d in site.devices) for k in ("pdu", "rectifier", "ups",
                                                                  "cdu", "supercap", "meter")}
    # 100 racks: 5 rows of 20, 3 pods of 2 rows (the last one half), 3 CDUs a loop
    # and a pod's incomer and cooling-plant feeder, each metered
    assert kinds == {"pdu": 200, "rectifier": 3, "ups": 3, "cdu": 9, "supercap": 5, "meter": 6}
    assert len({d.port for d in site.devices if d.protocol == "snmp"}) == 203
    for pod in ("1", "2", "3"):  # either source carries its pod at every rack's design power
        racks = [r for r in site.racks if site.device(r.feed_a).upstream == f"rect-{pod}"]
        design_kw = sum(r.design_kw for r in racks)
        rect, ups = site.device(f"rect-{pod}"), site.device(f"ups-{pod}")
        assert (rect.modules - rect.spare_modules) * rect.module_kw >= design_kw
        assert ups.rating_kw >= design_kw
    assert main(["check", str(path)]) == 0
    assert "site gen-100: 1 room(s), 100 racks, 226 devices" in capsys.readouterr().out


def test_a_generated_sites_facility_power_is_the_sum_of_its_pods_incomers(tmp_path):
    """The model on the simulator's values of a 3-pod site: facility and cooling power are
    the sums of the pods' meters (the simulator shares each evenly among them), and PUE is
    the physics' own (to the model's 0.001); the first incomer alone gave a third of it."""
    path = tmp_path / "site.yaml"
    main(["gen-site", "--racks", "100", "-o", str(path)])
    site = load_site(path)
    physics = SitePhysics(site)
    physics.step()
    truth, now = physics.truth(), time.time()
    latest = {(d.id, key): Sample(d.kind, {"device": d.id}, key, value, now)
              for d in site.devices for key, value in physics.values(d.id).items()}
    model = SiteModel(site)
    assert model.facility_meters == ["facility-1", "facility-2", "facility-3"]
    status = model.evaluate(latest, now)
    assert status.facility_kw == pytest.approx(truth["facility_kw"], abs=1e-3)
    assert status.cooling_kw == pytest.approx(truth["cooling_kw"], abs=1e-3)
    assert status.pue == pytest.approx(truth["pue"], abs=1e-3) and status.pue > 1
    assert latest[("facility-1", "power_kw")].value == pytest.approx(truth["facility_kw"] / 3)


def test_the_simulators_serve_a_generated_site(tmp_path):
    path = tmp_path / "site.yaml"
    main(["gen-site", "--racks", "40", "-o", str(path)])
    site = load_site(path)
    site = on_free_ports(site).model_copy(update={"defaults": site.defaults.model_copy(
        update={"poll_s": 1.0, "timeout_s": 2.0}), "model": site.model.model_copy(
        update={"tick_s": 1.0})})  # ~100 devices and their simulators on one event loop
    live = LiveSite(site, tmp_path / "data")
    live.start()
    try:
        live.settled()  # every device answers; every rack's headroom is complete
        status = live.runtime.status
        assert status.pue is not None and len(status.racks) == 40
        pools = {p.id: p for p in status.pools}
        assert pools["rect-1"].worst_failure == "ups-1" and pools["rect-1"].left_kw > 0
        wait_for(lambda: not live.runtime.evaluator.active_alerts(), what="no alert")
    finally:
        live.stop()


@pytest.mark.parametrize("snmp_by", ["python", "snmpd"])
def test_aidc_run_polls_a_farm_in_a_process_of_its_own(tmp_path, snmp_by):
    """`aidc farm` serves a generated site's devices (its SNMP ones by the Python simulator
    or by net-snmp's snmpd); `aidc run` of the same file, in another process, finds every
    one up and times its polls' starts; both stop cleanly on SIGINT."""
    import signal
    import subprocess
    import sys

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from aidc.core.net import free_port
    from simulators.site import free_port_offset

    path = tmp_path / "site.yaml"
    main(["gen-site", "--racks", "4", "-o", str(path)])
    first = 10_000 + free_port_offset(load_site(path))  # every device on a port free now
    main(["gen-site", "--racks", "4", "--first-port", str(first), "-o", str(path)])
    devices = len(load_site(path).devices)
    port = free_port()
    log = {name: tmp_path / f"{name}.log" for name in ("farm", "run")}

    def start(*args: str) -> subprocess.Popen:
        with open(log[args[0]], "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "aidc.cli", *args, "--site", str(path)],
                                    stdout=out, stderr=subprocess.STDOUT)

    def scraped(name: str, sample: str) -> float:
        """The sum of a metric's samples named ``sample`` (0 until aidc run answers)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        except httpx.HTTPError:
            return 0.0
        return sum(s.value for f in text_string_to_metric_families(text) if f.name == name
                   for s in f.samples if s.name == sample)

    procs = {"farm": start("farm", *["--snmpd"] * (snmp_by == "snmpd"))}
    try:
        wait_for(lambda: b"answering" in log["farm"].read_bytes(), timeout_s=90,
                 what="the farm serving")
        procs["run"] = start("run", "--data-dir", str(tmp_path / "data"), "--web-port", str(port))
        wait_for(lambda: scraped("aidc_device_up", "aidc_device_up") == devices, timeout_s=90,
                 what=f"aidc run to find all {devices} devices up")
        wait_for(lambda: scraped("aidc_poll_start_delay_seconds",
                                 "aidc_poll_start_delay_seconds_count") >= devices,
                 timeout_s=60, what="a second poll of each device timed")
    finally:
        for name, proc in reversed(procs.items()):
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0, log[name].read_text()[-2000:]
    farm_log = log["farm"].read_text()
    assert "aidc farm stopped." in farm_log
    snmp = sum(d.protocol == "snmp" for d in load_site(path).devices)
    assert f"({snmp if snmp_by == 'snmpd' else 0} by " in farm_log
