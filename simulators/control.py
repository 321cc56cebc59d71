"""Fault injection over HTTP for `aidc demo` (a write action: it needs the API token).

    curl -X POST -H "Authorization: Bearer $(cat data/demo/api-token)" \\
         -H 'content-type: application/json' http://127.0.0.1:8050/api/v1/sim/faults \\
         -d '{"fault": "utility_outage", "on": true}'
"""

from __future__ import annotations

import asyncio

from flask import Flask, jsonify, request
from pydantic import BaseModel, ConfigDict

from aidc.http import bearer_guard, parse
from simulators.site import SimulatedSite


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fault: str
    device: str | None = None
    metric: str | None = None
    on: bool = True
    value: float | None = None


def register_fault_routes(app: Flask, simulated: SimulatedSite, api_token: str | None) -> None:
    @app.get("/api/v1/sim/faults")
    def faults():
        return jsonify([
            {"fault": f, "device": d, "metric": m, "value": v}
            for (f, d, m), v in simulated.active.items()
        ])

    @app.post("/api/v1/sim/faults")
    @bearer_guard(api_token)
    def inject():
        q = parse(FaultRequest, request.get_json(silent=True))
        coro = simulated.inject(q.fault, q.device, q.metric, q.on, q.value)
        asyncio.run_coroutine_threadsafe(coro, simulated.loop).result(10)
        return jsonify(q.model_dump()), 201
