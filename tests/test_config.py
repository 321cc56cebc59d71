"""Site files: one folder per lesson in tests/cases/<case>/ (site.yaml + expected.err or
expected.out), run through the real `aidc check` entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aidc.cli import main
from aidc.core.config import load_site
from aidc.core.topology import Topology

CASES = Path(__file__).parent / "cases"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "site.yaml").exists()))
def test_check_case(case, monkeypatch, capsys, reliability):
    folder = CASES / case
    monkeypatch.chdir(folder)
    monkeypatch.delenv("AIDC_TEST_NEVER_SET", raising=False)
    if (folder / "expected.err").exists():
        try:
            code = main(["check", "site.yaml"])
        except SystemExit as e:
            code = e.code
        reliability.count("site files: invalid and hostile (tests/cases)", "files", 1,
                          accepted_invalid=code != 2)
        assert code == 2
        err = capsys.readouterr().err
        assert err == f"error: {(folder / 'expected.err').read_text().strip()}\n"
        assert "Traceback" not in err
    else:
        assert main(["check", "site.yaml"]) == 0
        out = capsys.readouterr().out
        for line in (folder / "expected.out").read_text().splitlines():
            assert line in out


def test_demo_site_topology():
    summary = Topology(load_site(ROOT / "site_configs" / "demo.yaml")).summary()
    assert "site demo: 1 room(s), 8 racks, 25 devices" in summary
    assert ("rectifier rect-a (13 x 60 kW modules, N+1: 720 of 780 kW usable) -> 8 PDU feeds "
            "-> racks A01, A02, A03, A04, B01") in summary
    assert "loop loop-1 (PG25, W32, N+1): CDUs cdu-1, cdu-2" in summary
    assert "hall1 row A: 4 racks, 360 kW design, 4 with A/B feeds" in summary


def test_secret_from_env_and_file_never_printed(tmp_path, monkeypatch):
    key = tmp_path / "auth.key"
    key.write_text("s3cret-from-file\n")
    text = (CASES / "valid_minimal" / "site.yaml").read_text().replace(
        "breaker_a: 32",
        "breaker_a: 32\n    snmp: {version: '3', user: ops, auth_protocol: SHA256, "
        "auth_key: 'file:auth.key', priv_protocol: AES128, priv_key: '${AIDC_TEST_PRIV}'}",
    )
    (tmp_path / "site.yaml").write_text(text)
    monkeypatch.setenv("AIDC_TEST_PRIV", "s3cret-from-env")
    site = load_site(tmp_path / "site.yaml")
    snmp = site.device("pdu-1").snmp
    assert snmp.auth_key.get_secret_value() == "s3cret-from-file"
    assert snmp.priv_key.get_secret_value() == "s3cret-from-env"
    assert "s3cret" not in repr(site) and "s3cret" not in str(site.model_dump(mode="json"))


def test_console_script_gives_one_line_not_a_traceback(tmp_path):
    (tmp_path / "site.yaml").write_text("site: x\nrooms: []\n")
    run = subprocess.run([sys.executable, "-m", "aidc.cli", "check", str(tmp_path / "site.yaml")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "rooms: List should have at least 1 item" in run.stderr


def test_backoff_waits_for_the_alert_then_doubles_to_its_cap():
    from aidc.core.metrics import backoff_s

    # poll 2 s, alert after 3 failures, cap 30 s: 2, 2, 2 (failures 0-2), then 4, 8, 16, 30, 30
    assert [backoff_s(2, f, 3, 30) for f in range(8)] == [2, 2, 2, 4, 8, 16, 30, 30]
    assert backoff_s(60, 5, 3, 30) == 60  # never faster than the poll interval


def test_a_rules_file_adds_its_rules_to_the_site_files():
    """Rules several sites share, in a file of their own beside the site file's."""
    site = load_site(CASES / "rules_file_valid" / "site.yaml")
    rules = site.alerts.rules
    assert set(rules) == {"cdu_supply_hot", "battery_runtime_low", "pue_above_target"}
    assert (rules["battery_runtime_low"].warning, rules["pue_above_target"].severity) == (900, "info")
    assert site.alerts.rules_file == str((CASES / "rules_file_valid" / "rules.yaml").resolve())
