"""The OpenAPI document against the server's routes, and schemathesis over it: real HTTP to
the API of a live simulated site of the module's own (the fuzz adds silences and acks)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from aidc.api import SiteAPI
from aidc.core.net import free_port
from aidc.openapi import openapi
from aidc.web import WebServer
from tests.conftest import API_TOKEN, start_live_site

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NOT_API = ("/_dash", "/_reload-hash", "/_favicon", "/assets/", "/static/", "/runbooks", "/<path",
           "/login", "/logout", "/_session")  # the console's sign-in, not the API


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    live = start_live_site(tmp_path_factory.mktemp("openapi") / "data")
    server = WebServer(SiteAPI(live.runtime), port=free_port(), api_token=API_TOKEN)
    server.start()
    yield server
    server.stop()
    live.stop()


def served_routes(web) -> set[tuple[str, str]]:
    """(path, method) of every route but the Dash page's own, as the document spells paths."""
    out = set()
    for rule in web.flask.url_map.iter_rules():
        if rule.rule == "/" or rule.rule.startswith(NOT_API):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        out |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def test_the_document_lists_every_route_and_only_those(web):
    doc = httpx.get(web.url + "api/v1/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    documented = {(p, m) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert documented == served_routes(web)
    writes = {(p, m) for p, m in documented if m != "get" and p != "/api/v1/whatif"}
    assert writes and all(doc["paths"][p][m]["security"] == [{"bearer": []}] for p, m in writes)


def test_unknown_api_paths_answer_json_never_the_page(web):
    r = httpx.get(web.url + "api/v1/nothing/here", timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "no API endpoint /api/v1/nothing/here"}
    r = httpx.get(web.url + "api/v1/whatif", timeout=10)  # a POST-only route
    assert r.status_code == 405 and r.headers["Allow"] == "OPTIONS, POST"
    assert r.json()["error"].startswith("GET is not allowed here")
    r = httpx.put(web.url + "api/v1/site", timeout=10)
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


API_SCHEMA = schemathesis.openapi.from_dict(openapi())
OPERATIONS = {f"{op.method.upper()} {op.path}": op
              for op in (r.ok() for r in API_SCHEMA.get_all_operations())}


# a path parameter is any string: what can be sent wrong is a query or a body
TAKES_INPUT = [f"{m.upper()} {path}" for path, item in openapi()["paths"].items()
               for m, op in item.items() if m != "parameters"
               and (op.get("requestBody") or any(p["in"] == "query" for p in op.get("parameters", ())))]
# JSON Schema cannot say that a matcher's =~ value must compile as a Python regex
REFUSED_THOUGH_SCHEMA_VALID = {"POST /api/v1/silences": [positive_data_acceptance]}


@pytest.mark.parametrize(("operation", "mode"),
                         [(o, GenerationMode.POSITIVE) for o in OPERATIONS]
                         + [(o, GenerationMode.NEGATIVE) for o in TAKES_INPUT],
                         ids=lambda v: v.value if isinstance(v, GenerationMode) else v)
def test_the_api_answers_what_its_document_says(web, operation, mode, reliability):
    """schemathesis on one operation, with every check it has: no 5xx, status codes, content
    types and bodies as documented, invalid input refused, writes refused without the token."""

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=OPERATIONS[operation].as_strategy(mode))
    def answers(case):
        failed = True
        try:
            case.call_and_validate(base_url=web.url.rstrip("/"), headers=AUTH, timeout=30,
                                   excluded_checks=REFUSED_THOUGH_SCHEMA_VALID.get(operation))
            failed = False
        finally:
            reliability.count("HTTP API: schemathesis, every check, OpenAPI document",
                              "requests", 1, failed_checks=failed)

    answers()
