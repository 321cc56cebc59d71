"""Hostile HTTP: every request a client can make gets a clear refusal, never a 500, a
blow-up in memory or its own body echoed back. Real HTTP against the real server (REST API,
Dash endpoint and the demo's fault injection) of a runtime that is not polling anything.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidc.api import SiteAPI
from aidc.core.config import load_site
from aidc.core.net import free_port
from aidc.http import MAX_BODY_BYTES
from aidc.runtime import Runtime
from aidc.web import WebServer
from simulators.control import register_fault_routes
from simulators.site import SimulatedSite
from tests.conftest import API_TOKEN, ROOT

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    site = load_site(ROOT / "site_configs" / "demo.yaml")
    runtime = Runtime(site, tmp_path_factory.mktemp("data"))
    server = WebServer(SiteAPI(runtime), port=free_port(), api_token=API_TOKEN)
    register_fault_routes(server.flask, SimulatedSite(site), server.auth)  # never started
    server.start()
    yield server
    server.stop()
    runtime.writer.close()
    runtime.outbox.close()


def post(web, path: str, content: bytes | str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(web.url + path.lstrip("/"), content=content, timeout=30,
                      headers={"content-type": "application/json", **(headers or {})})


def test_a_body_over_the_limit_is_refused_unread(web):
    r = post(web, "/api/v1/whatif", b"[" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413 and r.json() == {"error": "the request body is over 64 KiB"}


@pytest.mark.parametrize("path", ["/api/v1/whatif", "/api/v1/sim/faults",
                                  "/api/v1/alerts/x/ack", "/_dash-update-component"])
def test_deep_nesting_infinity_and_garbage_are_400s(web, path):
    for body in ("[" * 50_000 + "]" * 50_000, '{"row": "A", "racks": 1, "kw": Infinity}',
                 '{"fault": "slow", "device": "cdu-1", "value": Infinity}',
                 '{"fault": "slow", "device": "cdu-1", "value": 1e308}', "not json", "[]", "{}",
                 '{"output": "nope.children", "inputs": []}'):
        r = post(web, path, body, AUTH)
        assert 400 <= r.status_code < 500, (path, body[:40], r.status_code, r.text[:200])
        assert len(r.text) < 1000  # no echo of what was sent


def test_errors_never_echo_the_input_at_length(web):
    r = post(web, "/api/v1/whatif", json.dumps({"row": "R" * 50_000, "racks": 1, "kw": 1}))
    assert r.status_code == 400 and len(r.text) < 300 and "R" * 200 not in r.text
    r = httpx.get(web.url + "api/v1/racks/" + "Z" * 4000 + "/headroom", timeout=10)
    assert r.status_code == 404 and len(r.text) < 300


def test_a_token_must_come_as_bearer(web):
    body = json.dumps({"fault": "leak", "device": "cdu-1"})
    assert post(web, "/api/v1/sim/faults", body, {"Authorization": API_TOKEN}).status_code == 401
    assert post(web, "/api/v1/sim/faults", body, {"Authorization": f"Basic {API_TOKEN}"}
                ).status_code == 401  # fmt: skip


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["row", "racks", "kw", "capture", "feed_kw", "air_kw", "fault", "device", "metric",
          "on", "value", "by", "output", "inputs", "state", "changedPropIds", "outputs"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/api/v1/whatif", "/api/v1/sim/faults", "/api/v1/alerts/fp/ack",
                             "/_dash-update-component"]),
       body=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6) | JSON_VALUES)
def test_fuzzed_bodies_never_get_a_500(web, path, body, reliability):
    r = post(web, path, json.dumps(body), AUTH)
    reliability.count("HTTP: fuzzed JSON bodies (API, Dash, faults)", "requests", 1,
                      server_errors=r.status_code >= 500)
    assert r.status_code < 500, (path, body, r.status_code, r.text[:300])


WRONG_AUTH = [{}, {"Authorization": API_TOKEN}, {"Authorization": f"Basic {API_TOKEN}"},
              {"Authorization": "Bearer"},
              {"Authorization": f"Bearer {API_TOKEN[:-1]}"},
              {"Authorization": f"Bearer {API_TOKEN}x"}, {"Authorization": f"bearer {API_TOKEN}"}]


def test_no_write_is_taken_without_the_token(web, reliability):
    """Every route that takes a POST, PUT, PATCH or DELETE, with a well-formed body, and the
    page's own write actions (its callback that acknowledges and silences), under every
    wrong credential. The what-if's POST only asks; signing in and out touch only the
    caller's own session (tests/test_auth.py)."""
    body = {"by": "mallory", "fault": "leak", "device": "cdu-1", "on": True,
            "matchers": ["device=cdu-1"], "duration_s": 60, "created_by": "m", "comment": "x"}
    writes = [(rule.rule.replace("<fingerprint>", "fp").replace("<silence_id>", "s1"), method)
              for rule in web.flask.url_map.iter_rules()
              for method in sorted(rule.methods & {"POST", "PUT", "PATCH", "DELETE"})
              if rule.rule not in ("/_dash-update-component", "/api/v1/whatif", "/login",
                                   "/logout")]
    assert len(writes) >= 4
    accepted = []
    for path, method in writes:
        for headers in WRONG_AUTH:
            r = httpx.request(method, web.url + path.lstrip("/"), json=body, timeout=10,
                              headers=headers)
            if r.status_code not in (401, 403):
                accepted.append((method, path, headers, r.status_code))
    wrong_tokens = [None, "", f"Bearer {API_TOKEN}", API_TOKEN[:-1], API_TOKEN + "x",
                    API_TOKEN.upper(), f" {API_TOKEN}", ["x"]]
    for action in ("ack-selected", "silence-add"):
        for token in wrong_tokens:
            r = post(web, "/_dash-update-component", json.dumps(page_action(action, token)))
            if "Refused" not in r.text:
                accepted.append(("page", action, token, r.status_code, r.text[:200]))
    reliability.count("HTTP: writes with a missing or wrong token", "requests",
                      len(writes) * len(WRONG_AUTH) + 2 * len(wrong_tokens),
                      accepted=len(accepted))
    assert accepted == []


def page_action(action: str, token) -> dict:
    """The page's call of its operator-action callback, as a browser makes it."""
    values = {"operator-name": "mallory", "operator-token": token,
              "silence-matchers": "device=cdu-1", "silence-for": "2 h",
              "silence-comment": "x", "alerts-table": ["fp"]}
    return {"output": "action-result.children",
            "outputs": {"id": "action-result", "property": "children"},
            "inputs": [{"id": "ack-selected", "property": "n_clicks", "value": 1},
                       {"id": "silence-add", "property": "n_clicks", "value": 1}],
            "state": [{"id": k, "property": "selected_row_ids" if k == "alerts-table"
                       else "value", "value": v} for k, v in values.items()],
            "changedPropIds": [f"{action}.n_clicks"]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_page_callbacks_take_any_values_without_a_500(web, data, reliability):
    """Well-formed calls of the page's own callbacks, with values a browser would never
    send: each answers (the what-if says 'Cannot check: ...'), never a 500."""
    callbacks = web.dash.callback_map
    output = data.draw(st.sampled_from(sorted(callbacks)))
    spec = callbacks[output]

    def values(items):
        return [{"id": i["id"], "property": i["property"], "value": data.draw(JSON_VALUES)}
                for i in items]

    ids = [o.rsplit(".", 1) for o in output.strip(".").split("...")]
    outputs = [{"id": i, "property": p} for i, p in ids]
    body = {"output": output, "outputs": outputs if output.startswith("..") else outputs[0],
            "inputs": values(spec["inputs"]), "state": values(spec.get("state", [])),
            "changedPropIds": []}
    r = post(web, "/_dash-update-component", json.dumps(body))
    reliability.count("HTTP: Dash callbacks with hostile values", "requests", 1,
                      server_errors=r.status_code >= 500)
    assert r.status_code < 500, (output, body, r.status_code, r.text[:300])


def test_the_app_answers_while_the_process_holds_over_1024_descriptors(web):
    """A site of 1,000 racks polls 2,000 devices, a socket each: connections the web server
    accepts then get descriptors past select()'s 1,024, which killed waitress's thread
    (found by timing `aidc run` on a generated site)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = [open("/dev/null") for _ in range(1100)]  # noqa: SIM115
    try:
        for _ in range(3):
            r = httpx.get(web.url + "api/v1/site", timeout=10)
            assert r.status_code == 200 and r.json()["site"] == "demo"
    finally:
        for f in held:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert web._thread.is_alive()
