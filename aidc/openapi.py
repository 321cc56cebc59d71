"""The OpenAPI 3.1 document of the REST API, served at ``/api/v1/openapi.json``.

Request bodies and responses take their schemas from the same pydantic models and
dataclasses the code uses (``TypeAdapter``), so the document cannot drift from the fields;
a test checks its paths against the server's routes.
"""

from __future__ import annotations

from functools import cache
from typing import Any, get_type_hints

from pydantic import BaseModel, TypeAdapter, create_model

from aidc import __version__
from aidc.api import (
    ALERT_TIMES,
    DEVICE_TIMES,
    POOL_FIELDS,
    AckRequest,
    SilenceRequest,
    WhatIfQuestion,
)
from aidc.core.derive import BackupStatus, Pool, RackStatus, WhatIf
from aidc.core.metrics import DeviceHealth
from alerts.evaluate import Alert
from alerts.rules import Rule

NUMBER_OR_NULL = {"type": ["number", "null"]}
STRINGS = {"type": "array", "items": {"type": "string"}}
ISO_TIME = {"type": ["string", "null"], "format": "date-time", "description": "ISO 8601, UTC"}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
         "additionalProperties": False, "description": "One line saying what was expected."}


def schema_of(cls, *, drop: tuple[str, ...] = (), **props: dict) -> dict[str, Any]:
    """The JSON schema of a dataclass, model or named tuple (served as an object), some
    properties replaced or dropped."""
    if issubclass(cls, tuple):
        cls = create_model(cls.__name__, **{k: (t, ...) for k, t in get_type_hints(cls).items()})
    s = TypeAdapter(cls).json_schema(mode="serialization")
    s["properties"] = {k: v for k, v in s["properties"].items() if k not in drop} | props
    s["required"] = sorted((set(s.get("required", ())) - set(drop)) | set(props))
    return s


def by_limit(key: str) -> dict[str, dict]:
    """See ``aidc.api.by_limit_json``: finite limits by name, and the names of the others."""
    return {key: {"type": "object", "additionalProperties": {"type": "number"}},
            "unknown": STRINGS, "not_applicable": STRINGS}


def rack() -> dict[str, Any]:
    return schema_of(RackStatus, **by_limit("limits_kw"))


def pool() -> dict[str, Any]:
    s = schema_of(Pool)
    s["required"] = sorted(POOL_FIELDS)  # the others only for the kinds they apply to
    s["properties"]["supply_limit_c"] = NUMBER_OR_NULL  # +inf (no class limit) is null
    return s


def site() -> dict[str, Any]:
    numbers = ("pue", "it_kw", "facility_kw", "cooling_kw", "cooling_ppue", "power_ppue",
               "conversion_loss_kw", "measured_share", "pue_at_least", "pue_target")
    props = {k: NUMBER_OR_NULL for k in numbers} | {
        "site": {"type": "string"}, "pue_category": {"type": "integer"},
        "unaccounted": STRINGS, "missing": STRINGS, "note": {"type": ["string", "null"]},
        "updated_at": ISO_TIME, "state": {"enum": ["normal", "on_battery", "degraded", "stale"]},
        "state_detail": {"type": "string"}, "data_age_s": NUMBER_OR_NULL,
        "alerts": {"type": "object", "required": ["critical", "warning", "suppressed", "worst"],
                   "properties": {"critical": {"type": "integer"}, "warning": {"type": "integer"},
                                  "suppressed": {"type": "integer"},
                                  "worst": {"type": ["string", "null"]}}}}
    return {"type": "object", "properties": props, "required": sorted(props)}


def history_entry() -> dict[str, Any]:
    props = {"at": ISO_TIME, "kind": {"enum": ["firing", "escalated", "deescalated", "resolved"]},
             "fingerprint": {"type": "string"}, "rule": {"type": "string"},
             "labels": {"type": "object", "additionalProperties": {"type": "string"}},
             "severity": {"type": "string"}, "previous_severity": {"type": ["string", "null"]},
             "summary": {"type": "string"}, "value": NUMBER_OR_NULL, "unit": {"type": "string"},
             "starts_at": ISO_TIME}
    return {"type": "object", "properties": props, "required": sorted(props)}


def notification() -> dict[str, Any]:
    props = {"webhook": {"type": "string"}, "alert": {"type": "string"},
             "status": {"enum": ["pending", "dead"]}, "created_at": ISO_TIME,
             "attempts": {"type": "integer"}, "next_attempt_at": ISO_TIME,
             "last_error": {"type": ["string", "null"]}}
    return {"type": "object", "properties": props, "required": sorted(props)}


def reading() -> dict[str, Any]:
    props = {"series": {"type": "string"}, "value": NUMBER_OR_NULL, "read_value": NUMBER_OR_NULL,
             "quality": {"enum": ["good", "stale", "bad", "out_of_range"]}, "read_at": ISO_TIME}
    return {"type": "object", "properties": props, "required": sorted(props)}


def probe() -> dict[str, Any]:
    series = {"series": {"type": "string"}, "raw": {"type": ["string", "null"]},
              "value": NUMBER_OR_NULL, "read_value": NUMBER_OR_NULL,
              "quality": {"enum": ["good", "bad", "out_of_range"]}}
    props = {"device": {"type": "string"}, "read_at": ISO_TIME, "elapsed_ms": {"type": "number"},
             "error": {"type": ["string", "null"]},
             "readings": {"type": "array", "items": {"type": "object", "properties": series,
                                                     "required": sorted(series)}}}
    return {"type": "object", "properties": props, "required": sorted(props)}


def rack_detail() -> dict[str, Any]:
    feed = {"side": {"enum": ["A", "B"]}, "pdu": {"type": "string"},
            "upstream": {"type": "string"}, "power_kw": NUMBER_OR_NULL,
            "breaker_a": {"type": "number"}, "continuous_a": {"type": "number"},
            "phase_current_a": {"type": "object", "additionalProperties": NUMBER_OR_NULL}}
    device = {"id": {"type": "string"}, "kind": {"type": "string"}, "state": {"type": "string"}}
    props = rack()["properties"] | {
        "pools": {"type": "array", "items": ref("Pool")},
        "position": {"type": ["integer", "null"]}, "loop": {"type": ["string", "null"]},
        "feeds": {"type": "array", "items": {"type": "object", "properties": feed,
                                             "required": sorted(feed)}},
        "liquid_heat_kw": NUMBER_OR_NULL, "air_heat_kw": NUMBER_OR_NULL,
        "devices": {"type": "array", "items": {"type": "object", "properties": device,
                                               "required": sorted(device)}},
        "missing": STRINGS}
    return {"type": "object", "properties": props, "required": sorted(props)}


def interval_pue() -> dict[str, Any]:
    props = {k: NUMBER_OR_NULL for k in ("pue", "it_kwh", "facility_kwh", "cooling_ppue")}
    props |= {"site": {"type": "string"}, "window": {"type": "string"},
              "from": ISO_TIME, "to": ISO_TIME, "note": {"type": ["string", "null"]},
              "pue_category": {"type": "integer"}, "missing": STRINGS}
    return {"type": "object", "properties": props, "required": sorted(props)}


def silence() -> dict[str, Any]:
    props = {"id": {"type": "string"}, "matchers": STRINGS,
             "state": {"enum": ["pending", "active", "expired"]},
             "starts_at": ISO_TIME, "ends_at": ISO_TIME, "created_at": ISO_TIME,
             "created_by": {"type": "string"}, "comment": {"type": "string"},
             "expired_by": {"type": ["string", "null"]}}
    return {"type": "object", "properties": props, "required": sorted(props)}


def rule_schema() -> dict[str, Any]:
    schema = Rule.model_json_schema(mode="serialization")
    props = schema["properties"] | {
        "name": {"type": "string"}, "source": {"enum": ["aidc", "site"]},
        "settings": {"type": "string", "description": "How the rule is set, in words"},
        "runbook": {"type": "string", "description": "The site's own runbook, or the "
                    "console's page (a path)"}}
    return schema | {"properties": props, "required": sorted(props)}


def health() -> dict[str, Any]:
    props = {"status": {"enum": ["ok", "degraded", "stalled"]}, "inputs_never_read": STRINGS,
             "last_tick_age_s": {"type": "number"}, "devices_up": {"type": "integer"},
             "devices_total": {"type": "integer"}, "store_up": {"type": "boolean"},
             "store_error": {"type": ["string", "null"]}, "spooled_samples": {"type": "integer"},
             "store_behind_s": {"type": "number"}, "dropped_samples": {"type": "integer"},
             "rejected_samples": {"type": "integer"}}
    return {"type": "object", "properties": props, "required": sorted(props)}


def schemas() -> dict[str, dict]:
    return {
        "Error": ERROR,
        "Site": site(),
        "IntervalPue": interval_pue(),
        "Rack": rack(),
        "RackHeadroom": rack() | {"properties": rack()["properties"] | {
            "pools": {"type": "array", "items": ref("Pool")}}},
        "RackDetail": rack_detail(),
        "Pool": pool(),
        "Headroom": {"type": "object", "required": ["racks", "pools", "updated_at"],
                     "properties": {"racks": {"type": "array", "items": ref("Rack")},
                                    "pools": {"type": "array", "items": ref("Pool")},
                                    "updated_at": ISO_TIME}},
        "WhatIfQuestion": request_schema(WhatIfQuestion),
        "WhatIf": schema_of(WhatIf, drop=("racks_fit_by_limit",), **by_limit("racks_fit_by_limit")),
        "Backup": schema_of(BackupStatus),
        "Device": schema_of(DeviceHealth, **{k: ISO_TIME for k in DEVICE_TIMES}),
        "Alert": schema_of(Alert, **{k: ISO_TIME for k in ALERT_TIMES},
                           state={"enum": ["pending", "firing", "suppressed"]}),
        "Silence": silence(),
        "Rule": rule_schema(),
        "SilenceRequest": request_schema(SilenceRequest),
        "AckRequest": request_schema(AckRequest),
        "Health": health(),
        "Reading": reading(),
        "Probe": probe(),
        "HistoryEntry": history_entry(),
        "Notification": notification(),
    }


def request_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(mode="validation")


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def answers(status: int, schema: dict, description: str = "OK", *errors: int) -> dict:
    why = {400: "Bad input", 401: "Missing or wrong bearer token", 403: "Writes are disabled",
           404: "Not found", 413: "Body over 64 KiB", 503: "The runtime did not answer in time"}
    out = {str(status): {"description": description,
                         "content": {"application/json": {"schema": schema}}}}
    for e in errors:
        out[str(e)] = {"description": why[e],
                       "content": {"application/json": {"schema": ref("Error")}}}
    return out


def read(summary: str, schema: dict, *errors: int, params: list | None = None) -> dict:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": answers(200, schema, "OK", *errors)}}


def write(method: str, summary: str, body: str, schema: dict, status: int = 200,
          *errors: int) -> dict:
    return {method: {
        "summary": summary, "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref(body)}}},
        "responses": answers(status, schema, "Done", 400, 401, 403, 413, 503, *errors)}}


def path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def array_of(name: str) -> dict:
    return {"type": "array", "items": ref(name)}


@cache
def openapi() -> dict[str, Any]:
    """The document (built once: it depends on the code only, not on the site)."""
    fp = path_param("fingerprint", "The alert's fingerprint (from /api/v1/alerts).")
    return {
        "openapi": "3.1.0",
        "info": {"title": "aidc", "version": __version__, "description": (
            "Headroom, PUE, backup, devices and alerts of one site. Writes need "
            "`Authorization: Bearer <web.api_token>` (or an operator's console session with "
            "its X-CSRFToken); reads are open, or with `web.users` need a session or the "
            "token unless `web.anonymous_read`. Times are ISO 8601 UTC; a value that is "
            "unknown is null, never a number.")},
        "components": {"schemas": schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/healthz": {"get": {"summary": "Serving and ticking (503 when the model stalled)",
                                 "responses": answers(200, ref("Health"), "OK")
                                 | {"503": {"description": "Stalled", "content": {
                                     "application/json": {"schema": ref("Health")}}}}}},
            "/metrics": {"get": {"summary": "aidc's own health, Prometheus text format",
                                 "responses": {"200": {"description": "OK", "content": {
                                     "text/plain": {"schema": {"type": "string"}}}}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OK", "content": {"application/json": {
                    "schema": {"type": "object"}}}}}}},
            "/api/v1/site": read("PUE now (category stated), IT, facility, cooling kW",
                                 ref("Site")),
            "/api/v1/pue": read("PUE over a window from energy counters", ref("IntervalPue"), 400,
                                params=[query("window", {"enum": ["1h", "24h", "30d"]},
                                              "Default 1h.")]),
            "/api/v1/racks": read("Every rack's headroom", array_of("Rack")),
            "/api/v1/racks/{rack_id}": read(
                "One rack: its limits, feeds, heat and the devices it depends on",
                ref("RackDetail"), 404,
                params=[path_param("rack_id", "The rack's id in the site file.")]),
            "/api/v1/racks/{rack_id}/headroom": read(
                "One rack's limits and the shared pools it draws on", ref("RackHeadroom"), 404,
                params=[path_param("rack_id", "The rack's id in the site file.")]),
            "/api/v1/headroom": read("Racks with headroom, and every shared pool", ref("Headroom"),
                                     400, params=[
                                         query("row", {"type": "string"}, "Only this row."),
                                         query("min_kw", {"type": "number"},
                                               "Only racks with at least this headroom.")]),
            "/api/v1/whatif": {"post": {
                "summary": "Would N racks of P kW fit in a row (open: it changes nothing)",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ref("WhatIfQuestion")}}},
                "responses": answers(200, ref("WhatIf"), "The answer", 400, 404, 413)}},
            "/api/v1/backup": read("Supercap and battery ride-through against the generator",
                                   array_of("Backup")),
            "/api/v1/devices": read("Every device's polling state", array_of("Device")),
            "/api/v1/devices/{device_id}/readings": read(
                "One device's series as last read, with their quality", array_of("Reading"), 404,
                params=[path_param("device_id", "The device's id in the site file.")]),
            "/api/v1/devices/{device_id}/probe": read(
                "Read one device now, once, on a connection of its own (as `aidc probe`): "
                "every series as read off the wire, or why not; an answer under 2 s old is "
                "given again", ref("Probe"), 404, 503,
                params=[path_param("device_id", "The device's id in the site file.")]),
            "/api/v1/alerts": read("Pending, firing and suppressed alerts", array_of("Alert")),
            "/api/v1/alerts/history": read(
                "What changed: fired, escalated, de-escalated, resolved; newest first",
                array_of("HistoryEntry"), 400,
                params=[query("hours", {"type": "number", "exclusiveMinimum": 0,
                                        "maximum": 720}, "Default 24.")]),
            "/api/v1/notifications": read(
                "Notifications not delivered yet (with their last error) and dead letters",
                array_of("Notification")),
            "/api/v1/rules": read(
                "The site's rules as they run: aidc's rule pack with the site's changes "
                "(source aidc) and the site's own (source site)", array_of("Rule")),
            "/api/v1/alerts/{fingerprint}/ack": {**write(
                "post", "Acknowledge an alert: no repeats until it changes", "AckRequest",
                ref("Alert"), 200, 404), "parameters": [fp]},
            "/api/v1/silences": read("Silences, pending, active and expired",
                                     array_of("Silence"))
            | write("post", "Hold notifications of the alerts that match", "SilenceRequest",
                    ref("Silence"), 201),
            "/api/v1/silences/{silence_id}": {**write(
                "delete", "Expire a silence now", "AckRequest", ref("Silence"), 200, 404),
                "parameters": [path_param("silence_id", "The silence's id.")]},
        },
    }
