"""Fault injection over HTTP for `aidc demo` (a write action: it needs the API token).

    curl -X POST -H "Authorization: Bearer $(cat data/demo/api-token)" \\
         -H 'content-type: application/json' http://127.0.0.1:8050/api/v1/sim/faults \\
         -d '{"fault": "utility_outage", "on": true}'
"""

from __future__ import annotations

import asyncio
from typing import Literal

from flask import Flask, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from aidc.auth import Auth
from aidc.http import parse, write_guard
from simulators.site import FAULTS, SimulatedSite


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    fault: Literal[FAULTS]  # type: ignore[valid-type]
    device: str | None = Field(None, max_length=100)
    metric: str | None = Field(None, max_length=100)
    on: bool = True
    value: float | None = Field(None, ge=0, le=3600)  # seconds late, or a module number


def register_fault_routes(app: Flask, simulated: SimulatedSite, auth: Auth) -> None:
    @app.get("/api/v1/sim/faults")
    def faults():
        return jsonify([
            {"fault": f, "device": d, "metric": m, "value": v}
            for (f, d, m), v in simulated.active.items()
        ])

    @app.post("/api/v1/sim/faults")
    @write_guard(auth)
    def inject():
        q = parse(FaultRequest, request.get_json(silent=True))
        coro = simulated.inject(q.fault, q.device, q.metric, q.on, q.value)
        asyncio.run_coroutine_threadsafe(coro, simulated.loop).result(10)
        return jsonify(q.model_dump()), 201
