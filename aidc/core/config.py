"""Site configuration: YAML validated into typed objects (pydantic).

A user's mistake becomes one line, ``FILE:LINE: field: what was expected``, never a
traceback. Secrets are written as ``${ENV_VAR}`` or ``file:/path`` and resolved at load into
``SecretStr`` values, so they never appear in reprs or logs.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from aidc.core.fastyaml import read_plain_yaml
from aidc.core.matchers import a_matcher

Protocol = Literal["modbus", "snmp", "opcua"]
DeviceKind = Literal["pdu", "rectifier", "ups", "cdu", "manifold", "supercap", "meter"]
DEVICE_KINDS = get_args(DeviceKind)
ModelKind = Literal["rack", "room", "site"]  # what the model derives series of
DAY_S = 86_400.0
REPEAT_S = 4 * 3600.0  # a firing alert is told again this often (Alertmanager's default)
MAX_TIMEOUT_S = 600.0
MAX_KW = 1e6  # 1 GW: any larger power is a typo
MAX_DEPTH = 64  # of YAML nesting: a site file needs a handful
MAX_NODES = 1_000_000  # values a site file may hold, those its aliases repeat included
YAML_TAGS = {f"tag:yaml.org,2002:{t}" for t in
             ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp")}


class ConfigError(Exception):
    """A mistake in a site file, located at its line."""

    def __init__(self, path: str, line: int | None, field: str, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- protocol settings


class ModbusSettings(Strict):
    unit_id: int = Field(1, ge=0, le=255)


class SnmpSettings(Strict):
    version: Literal["2c", "3"] = "2c"
    community: SecretStr = SecretStr("public")
    user: str | None = None
    auth_protocol: Literal["none", "SHA", "SHA256"] = "none"
    auth_key: SecretStr | None = None
    priv_protocol: Literal["none", "AES128"] = "none"
    priv_key: SecretStr | None = None
    max_varbinds: int = Field(24, ge=1, le=128)

    @model_validator(mode="after")
    def _v3_needs_user(self) -> SnmpSettings:
        if self.version == "3" and not self.user:
            raise ValueError("SNMPv3 needs 'user'")
        if self.auth_protocol != "none" and self.auth_key is None:
            raise ValueError("auth_protocol set but no auth_key")
        if self.priv_protocol != "none" and self.auth_protocol == "none":
            raise ValueError("privacy (authPriv) needs an auth_protocol too")
        if self.priv_protocol != "none" and self.priv_key is None:
            raise ValueError("priv_protocol set but no priv_key")
        return self


OPCUA_SECURITY_POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
OPCUA_SECURITY_MODES = ("Sign", "SignAndEncrypt")


class OpcuaSettings(Strict):
    # "None", or "Policy,Mode,certificate,private_key[,server_certificate]"
    security: str = "None"
    key_password: SecretStr | None = None  # of the private key in `security`, if encrypted
    username: str | None = None
    password: SecretStr | None = None
    mode: Literal["subscribe", "poll"] = "subscribe"
    allow_insecure_password: bool = False  # send the password over security None anyway

    @model_validator(mode="after")
    def _no_password_in_clear(self) -> OpcuaSettings:
        if self.password is not None and self.security == "None" and not self.allow_insecure_password:
            raise ValueError(
                "a password with security None travels in clear: set opcua.security (e.g. "
                "Basic256Sha256,SignAndEncrypt,...), or allow_insecure_password: true")
        return self

    @field_validator("security")
    @classmethod
    def _security_string(cls, text: str) -> str:
        parts = [p.strip() for p in text.split(",")]
        if parts == ["None"] or (
            len(parts) in (4, 5) and "" not in parts
            and parts[0] in OPCUA_SECURITY_POLICIES and parts[1] in OPCUA_SECURITY_MODES
        ):
            return text
        raise ValueError(
            "expected 'None' or 'Policy,Mode,certificate,private_key[,server_certificate]' with "
            f"Policy one of {', '.join(OPCUA_SECURITY_POLICIES)} and Mode Sign or SignAndEncrypt"
        )


# ---------------------------------------------------------------- devices


class DeviceBase(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    protocol: Protocol
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    profile: str
    poll_s: float | None = Field(None, gt=0, le=DAY_S)
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)
    modbus: ModbusSettings = ModbusSettings()
    snmp: SnmpSettings = SnmpSettings()
    opcua: OpcuaSettings = OpcuaSettings()

    @property
    def transport(self) -> Literal["udp", "tcp"]:
        """What its port is: SNMP over UDP, Modbus and OPC-UA over TCP."""
        return "udp" if self.protocol == "snmp" else "tcp"


class Pdu(DeviceBase):
    """A rack PDU: one feed (A or B) of one rack. Inlet breaker sets its capacity."""

    kind: Literal["pdu"]
    upstream: str  # id of the rectifier or UPS that feeds it
    breaker_a: float = Field(gt=0, le=10_000)
    voltage_v: float = Field(gt=0, le=100_000)  # line-to-line for 3 phases, line for 1, DC bus
    phases: Literal[1, 3, "dc"] = 3
    power_factor: float = Field(0.95, gt=0, le=1)
    continuous_derating: float = Field(0.8, gt=0, le=1)  # NEC 210.20(A): 80 % continuous


class PowerSource(DeviceBase):
    """A rectifier system or UPS: the upstream of PDU feeds.

    A modular one (``modules`` of ``module_kw`` each) keeps ``redundancy`` as spare modules
    (N+1: one): its usable capacity is (modules reporting OK - spare) x module_kw, live,
    capped by ``rating_kw`` (its busbar and breaker). Without modules, ``rating_kw`` is the
    usable capacity with its redundancy already removed."""

    kind: Literal["rectifier", "ups"]
    rating_kw: float = Field(gt=0, le=MAX_KW)
    redundancy: Literal["N", "N+1", "N+2", "2N"] = "N+1"
    modules: int | None = Field(None, ge=1, le=1000)
    module_kw: float | None = Field(None, gt=0, le=MAX_KW)
    efficiency: float = Field(0.96, gt=0, le=1)  # for simulators and loss estimates
    battery_runtime_min: float | None = Field(None, gt=0, le=DAY_S / 60)  # if not reported

    @model_validator(mode="after")
    def _modules(self) -> PowerSource:
        if (self.modules is None) != (self.module_kw is None):
            raise ValueError("a modular source needs both 'modules' and 'module_kw'")
        if self.modules is not None and self.redundancy == "2N":
            raise ValueError("modules: redundancy is counted in spare modules (N, N+1, N+2)")
        if self.modules is not None and self.spare_modules >= self.modules:
            raise ValueError(f"{self.modules} modules cannot keep {self.spare_modules} spare")
        return self

    @property
    def spare_modules(self) -> int:
        return int(self.redundancy[2:]) if self.redundancy.startswith("N+") else 0


class Cdu(DeviceBase):
    """A coolant distribution unit: its nameplate heat capacity, and the secondary flow and
    pumps that capacity needs."""

    kind: Literal["cdu"]
    rated_kw: float = Field(gt=0, le=MAX_KW)  # heat capacity at the loop's design rise
    max_flow_lpm: float | None = Field(None, gt=0, le=1e6)  # maximum secondary flow
    pumps: int = Field(2, ge=1, le=16)  # installed
    pumps_required: int = Field(1, ge=1, le=16)  # running for the maximum flow
    # the vendor's envelope of the secondary loop: below this flow the cold plates starve,
    # above this differential pressure a strainer clogs or a valve is shut (alerted when set)
    min_flow_lpm: float | None = Field(None, gt=0, le=1e6)
    max_dp_kpa: float | None = Field(None, gt=0, le=10_000)

    @model_validator(mode="after")
    def _pumps(self) -> Cdu:
        if self.pumps_required > self.pumps:
            raise ValueError(f"pumps_required {self.pumps_required} > pumps {self.pumps}")
        return self


class Manifold(DeviceBase):
    """A rack's coolant manifold meter: its secondary flow and temperatures."""

    kind: Literal["manifold"]


class Supercap(DeviceBase):
    kind: Literal["supercap"]
    capacitance_f: float = Field(gt=0, le=1e7)  # rated (end of life: 20 % below)
    esr_mohm: float | None = Field(None, gt=0, le=1e6)  # rated (end of life: twice it)
    vmax_v: float = Field(gt=0, le=10_000)
    vmin_v: float = Field(ge=0, le=10_000)

    @model_validator(mode="after")
    def _voltages(self) -> Supercap:
        if self.vmin_v >= self.vmax_v:
            raise ValueError(f"vmin_v {self.vmin_v:g} must be below vmax_v {self.vmax_v:g}")
        return self


class Meter(DeviceBase):
    kind: Literal["meter"]
    role: Literal["facility", "cooling", "other"] = "other"


Device = Annotated[
    Pdu | PowerSource | Cdu | Manifold | Supercap | Meter, Field(discriminator="kind")
]


# ---------------------------------------------------------------- topology


class RackLiquid(Strict):
    """A rack's own liquid limit: its manifold's maximum flow at a design rise, and the
    manifold meter (a device of kind manifold) that measures its flow and temperatures."""

    max_flow_lpm: float = Field(gt=0, le=1e5)
    design_dt_k: float | None = Field(None, gt=0, le=100)  # default: its loop's design_dt_k
    meter: str | None = None


class Rack(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    room: str
    row: str
    design_kw: float = Field(gt=0, le=10_000)
    capture_ratio: float = Field(0.85, ge=0, le=1)  # heat to liquid / rack power
    air_kw: float | None = Field(None, ge=0, le=10_000)  # air allowance for the residual heat
    feed_a: str
    feed_b: str | None = None
    loop: str | None = None
    supercap: str | None = None
    manifold: RackLiquid | None = None
    position: int | None = Field(None, ge=1, le=10_000)  # slot in its row, from the row's start


class Loop(Strict):
    id: str
    cdus: list[str] = Field(min_length=1)
    redundancy: Literal["N", "N+1"] = "N+1"
    fluid: Literal["water", "PG25"] = "PG25"
    ashrae_class: Literal["W17", "W27", "W32", "W40", "W45", "W+"] = "W32"
    design_dt_k: float = Field(10, gt=0, le=100)  # allowed supply-to-return rise
    design_supply_c: float = Field(35, ge=0, le=100)  # technology supply at design
    # the ASHRAE W classes are defined on facility water; "technology_supply" compares the
    # CDUs' secondary supply instead, where the facility side is not metered
    class_checked_on: Literal["facility_supply", "technology_supply"] = "facility_supply"


class Room(Strict):
    id: str
    name: str | None = None
    rows: list[str] = []  # front to back as the floor shows them; none: its racks' rows, sorted


class Webhook(Strict):
    name: str = "webhook"
    # http(s) for the webhook formats; for apprise, any URL apprise knows (slack://,
    # msteams://, pagerduty://, mailto://, json://...): write its tokens as ${ENV}
    url: str = Field(pattern=r"^[a-z][a-z0-9+.-]*://\S+", max_length=2000)
    secret: SecretStr | None = None  # HMAC-SHA256 key for the X-Aidc-Signature header
    # generic: aidc's JSON; alertmanager: Alertmanager's webhook v4, for receivers written for
    # it; alertmanager_push: postable alerts for Alertmanager's own POST /api/v2/alerts;
    # apprise: a chat or paging message through apprise (Slack, Teams, email...);
    # pagerduty: PagerDuty Events API v2 (https://events.pagerduty.com/v2/enqueue), each
    # alert an incident by its fingerprint, resolved when it resolves (apprise's PagerDuty
    # service only triggers: its incidents never resolve)
    format: Literal["generic", "alertmanager", "alertmanager_push", "apprise",
                    "pagerduty"] = "generic"
    routing_key: SecretStr | None = None  # pagerduty: the integration's key, as ${ENV}
    # per receiver: a request unanswered this long is retried later (Slack, PagerDuty and
    # Alertmanager answer in well under a second; 10 s leaves a slow one room without resending)
    timeout_s: float = Field(10, gt=0, le=MAX_TIMEOUT_S)

    @model_validator(mode="after")
    def _url_for_format(self) -> Webhook:
        if self.format != "apprise" and not re.match(r"https?://[^\s/]+", self.url):
            raise ValueError(f"url: format {self.format} posts over http(s): expected "
                             "http://host/... or https://host/...")
        if self.format == "pagerduty" and self.routing_key is None:
            raise ValueError("routing_key: format pagerduty needs its integration's routing key "
                             "(write it as ${ENV})")
        if self.format == "apprise":
            import apprise

            if not apprise.Apprise().add(self.url):
                raise ValueError(f"url: apprise knows no service at {self.url.split(':')[0]}://"
                                 " (see apprise's list of services)")
        return self


LabelName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]


class Route(Strict):
    """Where notifications go, as Alertmanager's routes, kept flat: an alert takes the first
    route whose matchers all hold (over its rule, severity and labels; none: every alert),
    and the routes after one with ``continue`` too. ``repeat_s``: how often its receivers
    are reminded of a firing alert nobody acknowledged (Alertmanager's repeat_interval;
    default ``alerts.repeat_s``).

    ``group_by`` (Alertmanager's grouping): the route's alerts that share these labels
    (``rule`` and ``severity`` name the alert's own) reach each receiver as one notification,
    the first ``group_wait_s`` after the group's first alert, then its changes gathered over
    ``group_interval_s``. Without it, each alert is a notification of its own, sent at once."""

    matchers: list[Annotated[str, AfterValidator(a_matcher)]] = []
    receivers: list[str] = Field(min_length=1)  # webhook names
    continue_: bool = Field(False, alias="continue")
    repeat_s: float | None = Field(None, gt=0, le=30 * DAY_S)
    group_by: list[LabelName] | None = None
    group_wait_s: float = Field(30, ge=0, le=DAY_S)  # Alertmanager's defaults
    group_interval_s: float = Field(300, gt=0, le=DAY_S)


Severity = Literal["critical", "warning", "info"]


SUMMARY_FIELDS = ("device", "kind", "metric", "value", "unit", "threshold", "severity",
                  "warning", "critical", "room", "row", "rack", "loop")  # what a rule's
# summary or description may name (warning, critical: the subject's levels)


def a_level(value: object) -> object:
    """A rule's level: a number in its unit, or the name of a number each device's entry in
    the site file gives (a CDU's min_flow_lpm), so that each device is judged by its own."""
    if isinstance(value, str) and not re.fullmatch(r"[a-z][a-z0-9_]*", value):
        raise ValueError(f"'{value}' is neither a number nor the name of a number each device "
                         "has (as min_flow_lpm)")
    return value


def a_clear(value: object) -> object:
    """How far back inside its level an alert clears: in the rule's unit, or a share of the
    level ("5%")."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]+(\.[0-9]+)? ?%", value):
        raise ValueError(f"'{value}' is neither a number nor a share of the level (as 5%)")
    if isinstance(value, int | float) and value < 0:
        raise ValueError(f"{value:g} is below 0 (how far back inside its level it clears)")
    return value


Level = Annotated[float | str, BeforeValidator(a_level)]
Clear = Annotated[float | str, BeforeValidator(a_clear)]


def device_setting_problem(kind: str | None, setting: str) -> str | None:
    """Why ``setting`` is not a number a device of ``kind`` has in the site file, or None."""
    classes = [c for c in get_args(get_args(Device)[0])
               if kind in get_args(c.model_fields["kind"].annotation)]
    if not classes:
        return f"a level named '{setting}' needs a device kind ({', '.join(DEVICE_KINDS)})"
    numbers = sorted(n for n, f in classes[0].model_fields.items()  # its own, not a port's
                     if n not in DeviceBase.model_fields
                     and {int, float} & {f.annotation, *get_args(f.annotation)})
    if setting not in numbers:
        return f"a {kind} has no number '{setting}' (it has {', '.join(numbers)})"
    return None


class RuleSettings(Strict):
    """A rule as a site file gives it (``alerts.rules.<rule>``).

    For a rule of aidc's pack, what the site changes; what is not given stays as the pack has
    it. Such a rule takes only the settings its pack entry has (``for_s``, ``severity``,
    ``warning``/``critical``, ``clear``), besides ``enabled``, ``labels`` (added to its
    alerts, for routes to match), ``runbook_url`` and ``description``. A name the pack does
    not have is the site's own rule over a metric, as the pack's rules over a metric are:
    every series of a ``metric`` of a ``kind`` (a device's, rows too: each phase of a PDU; or
    the model's: a rack's, a room's, the site's) that ``fires`` above or below its
    ``warning``/``critical`` levels (a device's own number where a level names one), where
    its ``matchers`` take it (over device, kind, room, row, rack and row labels)."""

    enabled: bool = True
    for_s: float | None = Field(None, ge=0, le=DAY_S)  # the condition holds this long first
    severity: Severity | None = None  # of a rule with one severity
    warning: Level | None = None  # the levels of a rule with levels
    critical: Level | None = None
    labels: dict[LabelName, str] = {}
    runbook_url: str | None = Field(None, pattern=r"^https?://\S+$", max_length=2000)
    # a rule of the site's own
    kind: DeviceKind | ModelKind | None = None
    metric: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$")  # as the store names it
    fires: Literal["above", "below"] | None = None
    clear: Clear = 0.0  # hysteresis: clears this far back inside its level ("5%": of it)
    matchers: list[Annotated[str, AfterValidator(a_matcher)]] = []
    unit: str | None = Field(None, max_length=20)
    summary: str | None = Field(None, max_length=500)  # "{device} inlet {value:.1f} {unit}"
    meaning: str | None = Field(None, max_length=2000)  # for the runbook page
    # what its notifications say the alert means, filled as a summary is; default: meaning
    description: str | None = Field(None, max_length=2000)
    steps: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _own_rule(self) -> RuleSettings:
        if self.metric is None:
            return self
        if self.kind is None or self.fires is None:
            raise ValueError("a rule of the site's own needs kind, metric and fires (above "
                             "or below)")
        if self.warning is None and self.critical is None:
            raise ValueError("a rule of the site's own needs a warning or critical level")
        if self.severity is not None:
            raise ValueError("a rule over a metric takes its severity from its levels")
        for level in (self.warning, self.critical):
            if isinstance(level, str) and (why := device_setting_problem(self.kind, level)):
                raise ValueError(why)
        return self

    @field_validator("summary", "description")
    @classmethod
    def _fillable(cls, template: str | None) -> str | None:
        try:
            template is None or template.format(**{f: 1.0 for f in SUMMARY_FIELDS})
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"cannot fill {e} (a summary or description may name "
                             f"{', '.join(SUMMARY_FIELDS)})") from None
        return template


class Alerts(Strict):
    unreachable_intervals: int = Field(3, ge=1, le=1000)
    repeat_s: float = Field(REPEAT_S, gt=0, le=30 * DAY_S)
    webhooks: list[Webhook] = []
    routes: list[Route] = []  # none: every webhook gets every notification
    rules: dict[str, RuleSettings] = {}  # rule name -> what this site changes in it
    # more of them in a file of their own (``rules:`` as above), relative to the site file:
    # rules that several sites share
    rules_file: str | None = None

    @property
    def shortest_repeat_s(self) -> float:
        """How often reminders are looked for: the shortest repeat of any route."""
        return min([self.repeat_s, *(r.repeat_s for r in self.routes if r.repeat_s)])


class RulesFile(Strict):
    rules: dict[str, RuleSettings] = {}


class Store(Strict):
    backend: Literal["embedded", "influxdb"] = "embedded"
    path: str = "data/aidc.sqlite"  # embedded, relative to the site file's data dir
    # how long samples are kept as read, then as 1-minute and 1-hour min/mean/max (the
    # embedded store rolls them up itself; on InfluxDB 1.x aidc makes retention policies and
    # continuous queries that do it)
    raw_days: float = Field(30, ge=0.125, le=3650)  # 3 h at least: an hour's rollup is
    minute_days: float = Field(90, ge=0.125, le=3650)  # recomputed over the last 2
    hour_days: float = Field(400, ge=0.125, le=36500)
    url: str = "http://127.0.0.1:8086"  # influxdb
    database: str = "aidc"  # 1.x database, or 2.x bucket
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    batch_size: int = Field(5000, ge=1, le=1_000_000)
    flush_s: float = Field(1.0, gt=0, le=3600)
    create_database: bool = True  # influxdb 1.x: create it at start and when it was dropped

    @model_validator(mode="after")
    def _coarser_kept_longer(self) -> Store:
        if not self.raw_days <= self.minute_days <= self.hour_days:
            raise ValueError("raw_days <= minute_days <= hour_days: a rollup is made from "
                             "what the finer one keeps")
        return self


class Model(Strict):
    tick_s: float = Field(5, gt=0, le=3600)
    pue_target: float = Field(1.3, ge=1, le=10)
    peak_window_s: float = Field(300, gt=0, le=DAY_S)  # capacity holds the peak over this
    # where IT power is measured (ISO/IEC 30134-2 category 1, 2, 3): the rectifier/UPS
    # outputs, the PDUs, or the IT equipment inputs (the PDUs' outlets)
    it_measured_at: Literal["ups_output", "pdu_output", "it_input"] = "pdu_output"
    # loads with no meter, declared (lighting, offices...); "cooling" declares the cooling
    # plant when no meter has role cooling
    unmetered_kw: dict[str, Annotated[float, Field(ge=0, le=MAX_KW)]] = {}
    generator_start_s: float = Field(10, gt=0, le=3600)  # NFPA 110 Type 10
    transfer_s: float = Field(0, ge=0, le=3600)  # only if generator_start_s excludes it
    supercap_efficiency: float = Field(0.95, gt=0, le=1)  # DC/DC between supercap and load


class User(Strict):
    """Who may sign in to the console: a viewer reads, an operator also acknowledges and
    silences, an admin may do all of it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", max_length=100)
    role: Literal["viewer", "operator", "admin"] = "viewer"
    password_hash: SecretStr  # argon2, from `aidc hash-password`; or a ${VAR} or file: holding it

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith("$argon2"):
            raise ValueError("expected an argon2 hash (from `aidc hash-password`), never a password")
        return v


class UsersFile(Strict):
    """``web.users_file``: people kept apart from the site file, so that adding one is not a
    site change, and re-read by the running console when it changes."""

    users: list[User] = []


class Web(Strict):
    api_token: SecretStr | None = None  # bearer token for write actions (ack); none: refused
    # where people reach this app (behind its proxy): notifications link to its console and
    # runbooks; without it they carry no links
    external_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    users: list[User] = []  # none: no sign-in (reads open, writes by api_token only)
    # more users, kept out of the site file (users: [...] as above); read again on change
    users_file: str | None = None
    anonymous_read: bool = False  # with users: reading needs no sign-in
    session_secret: SecretStr | None = None  # signs session cookies; none: one in the data dir


class Defaults(Strict):
    poll_s: float = Field(5, gt=0, le=DAY_S)
    timeout_s: float = Field(2, gt=0, le=MAX_TIMEOUT_S)
    backoff_max_s: float = Field(30, gt=0, le=DAY_S)  # longest wait between polls of a dead device


class Site(Strict):
    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    defaults: Defaults = Defaults()
    store: Store = Store()
    model: Model = Model()
    alerts: Alerts = Alerts()
    web: Web = Web()
    rooms: list[Room] = Field(min_length=1)
    devices: list[Device] = Field(min_length=1)
    racks: list[Rack] = Field(min_length=1)
    loops: list[Loop] = []

    def device(self, device_id: str) -> Any:
        """The device with this id (KeyError if none): one lookup; index `devices` by id
        where many are needed."""
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    def poll_s(self, device: DeviceBase) -> float:
        return device.poll_s or self.defaults.poll_s

    def timeout_s(self, device: DeviceBase) -> float:
        return device.timeout_s or self.defaults.timeout_s

    def devices_of(self, kind: str) -> list[Any]:
        return [d for d in self.devices if d.kind == kind]


# ---------------------------------------------------------------- cross references


def _unique(*sections: tuple[tuple, list, str]) -> list[tuple[tuple, str]]:
    """Each (location, items, key): an item whose key another item before it has."""
    errors: list[tuple[tuple, str]] = []
    for section, items, key in sections:
        seen: set[str] = set()
        for i, item in enumerate(items):
            value = getattr(item, key)
            if value in seen:
                errors.append(((*section, i, key), f"{key} '{value}' is used twice"))
            seen.add(value)
    return errors


def _references(site: Site) -> list[tuple[tuple, str]]:
    """Every id that must name something else in the file: (location, message)."""
    errors = _unique(
        (("devices",), site.devices, "id"),
        (("racks",), site.racks, "id"),
        (("loops",), site.loops, "id"),
        (("alerts", "webhooks"), site.alerts.webhooks, "name"),
        (("web", "users"), site.web.users, "name"),
    )
    kinds = {d.id: d.kind for d in site.devices}
    rooms = {r.id for r in site.rooms}
    rows = {r.id: set(r.rows) for r in site.rooms}
    loops = {lp.id for lp in site.loops}
    slots: dict[tuple[str, str, int], str] = {}  # (room, row, position) -> rack

    def need(loc: tuple, ref: str | None, allowed: set[str], what: str) -> None:
        if ref is not None and kinds.get(ref) not in allowed:
            found = f"a {kinds[ref]}" if ref in kinds else "nothing"
            errors.append((loc, f"expected the id of a {what}, '{ref}' names {found}"))

    for i, d in enumerate(site.devices):
        if d.kind == "pdu":
            need(("devices", i, "upstream"), d.upstream, {"rectifier", "ups"}, "rectifier or ups")
    for i, r in enumerate(site.racks):
        need(("racks", i, "feed_a"), r.feed_a, {"pdu"}, "pdu")
        need(("racks", i, "feed_b"), r.feed_b, {"pdu"}, "pdu")
        need(("racks", i, "supercap"), r.supercap, {"supercap"}, "supercap")
        if r.manifold is not None:
            need(("racks", i, "manifold", "meter"), r.manifold.meter, {"manifold"}, "manifold")
        if r.room not in rooms:
            errors.append((("racks", i, "room"), f"expected one of the rooms {sorted(rooms)}"))
        elif rows[r.room] and r.row not in rows[r.room]:
            expected = f"expected one of room {r.room}'s rows {sorted(rows[r.room])}"
            errors.append((("racks", i, "row"), expected))
        if r.position is not None:
            other = slots.setdefault((r.room, r.row, r.position), r.id)
            if other != r.id:
                taken = f"position {r.position} of row {r.row} is rack {other}'s"
                errors.append((("racks", i, "position"), taken))
        if r.loop is not None and r.loop not in loops:
            errors.append((("racks", i, "loop"), f"expected one of the loops {sorted(loops)}"))
        if r.feed_b is not None and r.feed_b == r.feed_a:
            errors.append((("racks", i, "feed_b"), "feed B must be another PDU than feed A"))
    for i, lp in enumerate(site.loops):
        for j, c in enumerate(lp.cdus):
            need(("loops", i, "cdus", j), c, {"cdu"}, "cdu")
    listening: dict[tuple[str, str, int], Any] = {}  # (transport, host, port) -> first device
    for i, d in enumerate(site.devices):
        other = listening.setdefault((d.transport, d.host, d.port), d)
        gateway = other.protocol == d.protocol == "modbus" and other.modbus.unit_id != d.modbus.unit_id
        if other is not d and not gateway:
            errors.append((("devices", i, "port"),
                           (f"{d.host}:{d.port} is already {other.id}'s (only Modbus units "
                            "behind one gateway share a port, with different unit_id)")))
        if d.protocol == "opcua" and d.opcua.security != "None":
            parts = [p.strip() for p in d.opcua.security.split(",")][2:]
            for file in (Path(p).expanduser() for p in parts):
                if not file.is_file():
                    errors.append((("devices", i, "opcua", "security"),
                                   f"certificate or key file {file} not found"))
    errors += _route_problems(site.alerts)
    fed = Counter([r.feed_a for r in site.racks] + [r.feed_b for r in site.racks if r.feed_b])
    for i, d in enumerate(site.devices):
        if d.kind == "pdu" and fed[d.id] > 1:
            errors.append((("devices", i, "id"), f"pdu '{d.id}' feeds more than one rack"))
    return errors


def _route_problems(alerts: Alerts) -> list[tuple[tuple, str]]:
    """Routes name webhooks that exist, every webhook is on a route, and the last route
    takes every alert: none goes unsent for want of a match."""
    if not alerts.routes:
        return []
    errors: list[tuple[tuple, str]] = []
    names = [w.name for w in alerts.webhooks]
    pushed = {w.name: w.format for w in alerts.webhooks
              if w.format in ("alertmanager_push", "pagerduty")}
    for i, route in enumerate(alerts.routes):
        for j, name in enumerate(route.receivers):
            if name not in names:
                errors.append((("alerts", "routes", i, "receivers", j),
                               f"no webhook is named '{name}' (webhooks: {', '.join(names)})"))
            elif name in pushed and route.group_by is not None:
                service = "Alertmanager" if pushed[name] == "alertmanager_push" else "PagerDuty"
                errors.append((("alerts", "routes", i, "group_by"),
                               f"webhook '{name}' pushes each alert to {service}, which "
                               + "groups them itself: group there instead"))
    if alerts.routes[-1].matchers:
        errors.append((("alerts", "routes", len(alerts.routes) - 1, "matchers"),
                       ("the last route must have no matchers: it takes every alert the "
                        "routes before it did not, so that none goes unsent")))
    routed = {name for route in alerts.routes for name in route.receivers}
    for i, name in enumerate(names):
        if name not in routed:
            errors.append((("alerts", "webhooks", i, "name"),
                           f"webhook '{name}' is on no route: it would never be sent anything"))
    return errors


# ---------------------------------------------------------------- secrets and loading

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _walk(root: yaml.Node, path: str, base: Path) -> None:
    """One iterative pass over the parsed file, before anything is built from it: refuse
    duplicate keys (the last one would silently win), keys that are not plain values, tags
    beyond plain YAML (``!!python/object``, ``!custom``), nesting deeper than MAX_DEPTH and
    aliases that expand past MAX_NODES values (an alias bomb); and resolve secrets:
    ``${VAR}`` from the environment, ``file:PATH`` from the file's first line."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        line = node.start_mark.line + 1
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(path, line, "", f"anchors and aliases expand to more than "
                                              f"{MAX_NODES:,} values")  # fmt: skip
        if depth > MAX_DEPTH:
            raise ConfigError(path, line, "", f"nested deeper than {MAX_DEPTH} levels")
        if node.tag not in YAML_TAGS:
            raise ConfigError(path, line, "", f"the tag {node.tag} is not allowed: plain YAML only")
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise ConfigError(path, key.start_mark.line + 1, "",
                                      "a key must be a plain value, not a list or mapping")
                if key.value in keys and key.tag != "tag:yaml.org,2002:merge":
                    raise ConfigError(path, key.start_mark.line + 1, key.value,
                                      f"given twice (first at line {keys[key.value]})")
                keys[key.value] = key.start_mark.line + 1
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)
        elif isinstance(node.value, str):
            _resolve_secret(node, path, base, line)


def _resolve_secret(node: yaml.ScalarNode, path: str, base: Path, line: int) -> None:
    try:
        value = secret_value(node.value, base)
    except ValueError as e:
        raise ConfigError(path, line, "", str(e)) from None
    if value != node.value:
        node.value, node.tag = value, "tag:yaml.org,2002:str"


def secret_value(value: str, base: Path) -> str:
    """``${VAR}`` from the environment and ``file:PATH`` (relative to the site file) from the
    file's first line; ValueError says why one does not resolve."""

    def env(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise ValueError(f"environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    value = _ENV.sub(env, value)
    if value.startswith("file:"):
        secret_file = (base / value[5:]).expanduser()
        try:
            return secret_file.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read {secret_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{secret_file} is not text") from None
    return value


def _line_of(node: yaml.Node, loc: tuple) -> int | None:
    """The line of the deepest YAML node that ``loc`` reaches."""
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == key]
            if not match:  # a missing field, or pydantic's union tag: stay on this node
                continue
            k, node = match[0]
            line = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(
            node.value
        ):
            node = node.value[key]
            line = node.start_mark.line + 1
        # a union tag such as 'pdu' in pydantic's loc has no YAML node: skip it
    return line


def _field_name(loc: tuple) -> str:
    out = ""
    for key in loc:
        if isinstance(key, int):
            out += f"[{key}]"
        elif key in DEVICE_KINDS and out.endswith("]"):
            continue  # pydantic's discriminated-union tag
        else:
            out += f".{key}" if out else str(key)
    return out


def _message(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (check its spelling)"
    if kind == "union_tag_invalid":
        return f"expected kind one of {err['ctx']['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"each device needs a 'kind' ({', '.join(DEVICE_KINDS)})"
    return msg.removeprefix("Value error, ")


def _yaml_error(name: str, text: str, libyaml_error: yaml.YAMLError) -> ConfigError:
    """The mistake libyaml refused, worded by PyYAML's own parser where it can say more
    ("expected ',' or '}', but got ':'"); parsed again only on this error path."""
    error: Any = libyaml_error
    try:
        yaml.compose(text)
    except yaml.YAMLError as e:
        error = e
    except RecursionError:  # nesting beyond the pure-Python parser: libyaml's words
        pass
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text[: error.position].count("\n") + 1
        return ConfigError(name, line, "", f"not valid YAML: the character #x{error.character:04x} "
                                           "is not allowed")  # fmt: skip
    mark, context = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
    message = f"not valid YAML: {getattr(error, 'problem', None) or error}".splitlines()[0]
    if context is not None and getattr(error, "context", None):
        message += f" ({error.context} at line {context.line + 1})"
    return ConfigError(name, mark.line + 1 if mark else 1, "", message)


def load_site(path: str | os.PathLike[str], check: Problems | None = None) -> Site:
    """Read and validate a site file; raise ConfigError with the line of the first mistake.

    ``check`` gives the mistakes the layers above find, as [(location, message)] (the CLI's:
    a device's profile that does not load or fit it, a rule the rule pack does not have);
    they are located like any other. A users file it names is read and checked too, and its
    path made absolute (the console reads it again when it changes)."""
    site = load_model(path, Site, lambda s: _references(s) + (check(s) if check else []),
                      "expected a mapping with site, rooms, devices, racks")
    if site.alerts.rules_file is not None:
        site = _with_rules_file(site, Path(path).parent / Path(site.alerts.rules_file).expanduser(),
                                check)
    if site.web.users_file is None:
        return site
    users_file = Path(path).parent / Path(site.web.users_file).expanduser()
    load_users(users_file, {u.name for u in site.web.users})  # its mistakes named as written
    web = site.web.model_copy(update={"users_file": str(users_file.resolve())})
    return site.model_copy(update={"web": web})


def _with_rules_file(site: Site, path: Path, check: Problems | None) -> Site:
    """``site`` with the rules of its rules file too, checked like the site file's own (by
    ``check``) and named at their lines in that file; a rule the site file also has is
    refused (which would hold?)."""
    def with_rules(rules: dict[str, RuleSettings]) -> Site:
        alerts = site.alerts.model_copy(update={"rules": rules})
        return site.model_copy(update={"alerts": alerts})

    def problems(f: RulesFile) -> list[tuple[tuple, str]]:
        out = [(("rules", name), f"rule '{name}' is in the site file's alerts.rules too")
               for name in f.rules if name in site.alerts.rules]
        found = check(with_rules(f.rules)) if check and f.rules else []
        return out + [(("rules", *loc[2:]), message) for loc, message in found
                      if loc[:2] == ("alerts", "rules")]

    shared = load_model(path, RulesFile, problems, "expected a mapping with rules").rules
    site = with_rules(shared | site.alerts.rules)
    alerts = site.alerts.model_copy(update={"rules_file": str(path.resolve())})
    return site.model_copy(update={"alerts": alerts})


def load_users(path: str | os.PathLike[str], in_site_file: set[str] = frozenset()) -> list[User]:
    """The users of a users file (``web.users_file``), checked like a site file; a name the
    site file's ``web.users`` also gives is refused (which one would sign in?)."""
    def problems(f: UsersFile) -> list:
        return _unique((("users",), f.users, "name")) + [
            (("users", i, "name"), f"'{u.name}' is in the site file's web.users too")
            for i, u in enumerate(f.users) if u.name in in_site_file]

    return list(load_model(path, UsersFile, problems, "expected a mapping with users").users)


M = TypeVar("M", bound=BaseModel)
Problems = Callable[[Any], list[tuple[tuple, str]]]  # a loaded file -> [(location, message)]


def load_model(path: str | os.PathLike[str], model: type[M], problems: Problems,
               expected: str) -> M:
    """One YAML file validated into ``model``, the first mistake (of pydantic's or of
    ``problems``: [(location, message)]) raised as ConfigError at its line."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(name, None, "", f"cannot read the file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(name, line, "", f"not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    base = Path(path).parent
    data = read_plain_yaml(text, MAX_NODES, MAX_DEPTH, lambda value: secret_value(value, base))
    if data is not None:  # read fast; PyYAML reads it again only to locate a mistake
        try:
            loaded = model.model_validate(data)
        except ValidationError:
            pass
        else:
            if not problems(loaded):
                return loaded
    root, data = _read_exact(name, text, base, expected)
    try:
        loaded = model.model_validate(data)
    except ValidationError as e:
        err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden")  # typos first
        loc = tuple(err["loc"])
        if err["type"] == "union_tag_invalid":
            loc += ("kind",)
        raise ConfigError(name, _line_of(root, loc), _field_name(loc), _message(err)) from None
    if found := problems(loaded):
        loc, message = found[0]
        raise ConfigError(name, _line_of(root, loc), _field_name(loc), message)
    return loaded


def _read_exact(name: str, text: str, base: Path, expected: str) -> tuple[yaml.Node, Any]:
    """PyYAML's reading, node by node: every check of `_walk`, and the lines of mistakes."""
    try:
        root = yaml.compose(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as e:
        raise _yaml_error(name, text, e) from None
    except RecursionError:
        raise ConfigError(name, None, "", f"nested deeper than {MAX_DEPTH} levels") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ConfigError(name, 1, "", expected)
    _walk(root, name, base)
    try:
        return root, yaml.CSafeLoader("").construct_document(root)
    except yaml.YAMLError as e:  # e.g. a merge key that merges a list
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(name, mark.line + 1 if mark else None, "",
                          f"not valid YAML: {getattr(e, 'problem', e)}") from None
