"""Device profiles: register, OID and node maps as data (one YAML file per device model).

A profile maps a vendor's points onto canonical metrics (see aidc.core.metrics). Collectors decode
with it and simulators encode with it; the two share these files and nothing else, so that a
bug in one encoder cannot hide itself in the other.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

PROFILE_DIR = Path(__file__).parent
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]


class _Point(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    scale: float = 1.0  # value = raw * scale + offset
    offset: float = 0.0
    enum: dict[int, float] | None = None  # raw code -> canonical value (e.g. 5 -> on_battery 1)
    sentinels: list[int] = []  # raw values that mean "sensor fault": quality bad
    min: float | None = None  # plausible limits: outside gives quality out_of_range
    max: float | None = None


class Rows(BaseModel):
    """A point repeated once per row of a table: rows are labelled ``label=1..count``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # e.g. phase, outlet, module
    count: int = Field(ge=1, le=1024)  # Modbus: rows in the map; SNMP: the most rows walked
    stride: int = Field(0, ge=0)  # Modbus only: registers from one row to the next


class ModbusPoint(_Point):
    table: Literal["holding", "input", "coil", "discrete"] = "input"
    address: int = Field(ge=0, le=65535)  # zero-based protocol address (40001 -> holding 0)
    type: Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"] = "uint16"
    byte_order: ByteOrder | None = None  # overrides the profile's byte_order
    bit: int | None = Field(None, ge=0, le=15)  # a single bit of a 16-bit register
    rows: Rows | None = None  # row r (1-based) is at address + (r - 1) x stride

    @model_validator(mode="after")
    def _rows_fit(self) -> ModbusPoint:
        if self.rows is None or self.rows.count == 1:
            return self
        width = {"float64": 4, "int32": 2, "uint32": 2, "float32": 2}.get(self.type, 1)
        if self.table in ("holding", "input") and self.rows.stride < width:
            raise ValueError(f"rows.stride {self.rows.stride} is less than the point's {width} registers")
        if self.address + (self.rows.count - 1) * self.rows.stride + width > 65536:
            raise ValueError("the last row lies beyond address 65535")
        return self


class SnmpPoint(_Point):
    # several OIDs are combined with `reduce` (e.g. three output lines). With `rows`, one OID
    # is a table column walked with GETBULK, the row index becoming the label; a single `*`
    # marks where the index sits when the column continues after it (Raritan: ...1.*.5)
    oid: str | list[str]
    reduce: Literal["sum", "mean", "max"] = "sum"
    rows: Rows | None = None
    counter_bits: Literal[32, 64] | None = None  # a wrapping counter (energy): wrap handled

    @model_validator(mode="after")
    def _oid_shape(self) -> SnmpPoint:
        stars = sum(o.count("*") for o in ([self.oid] if isinstance(self.oid, str) else self.oid))
        if self.rows is not None and not isinstance(self.oid, str):
            raise ValueError("a rows point walks one column: give one oid, not a list")
        if stars > 1 or (stars and self.rows is None):
            raise ValueError("'*' marks the row index: once, and only on a rows point")
        return self


class OpcuaPoint(_Point):
    node: str  # NodeId string ("ns=2;s=Supercap.Voltage") or browse path ("0:Objects/2:SC/2:V")
    type: Literal["Boolean", "Int16", "UInt16", "Int32", "UInt32", "Float", "Double"] = "Double"
    deadband: float | None = Field(None, ge=0)  # absolute, for subscriptions (raw units)


class _Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""
    kind: Literal["cdu", "rectifier", "ups", "supercap", "pdu", "meter", "manifold"]


class ModbusProfile(_Profile):
    protocol: Literal["modbus"]
    byte_order: ByteOrder = "ABCD"
    max_registers: int = Field(100, ge=1, le=125)  # per read request (FC03/FC04 allow 125)
    max_gap: int = Field(8, ge=0)  # unmapped registers a coalesced read may span
    points: list[ModbusPoint] = Field(min_length=1)


class SnmpProfile(_Profile):
    protocol: Literal["snmp"]
    points: list[SnmpPoint] = Field(min_length=1)


class OpcuaProfile(_Profile):
    protocol: Literal["opcua"]
    namespace: str = "urn:aidc:simulator"
    points: list[OpcuaPoint] = Field(min_length=1)


Profile = Annotated[
    ModbusProfile | SnmpProfile | OpcuaProfile, Field(discriminator="protocol")
]
_adapter: TypeAdapter[Profile] = TypeAdapter(Profile)


class ProfileError(Exception):
    pass


@cache
def load_profile(name: str) -> ModbusProfile | SnmpProfile | OpcuaProfile:
    """Load ``name`` (a file in collectors/profiles, or a path to a YAML file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    try:
        data = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    except OSError:
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise ProfileError(f"profile '{name}' not found (known: {known})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: not UTF-8
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ProfileError(f"{path}: not a valid YAML profile: {reason}") from None
    try:
        return _adapter.validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(k) for k in err["loc"])
        raise ProfileError(f"{path}: {where}: {err['msg']}") from None
