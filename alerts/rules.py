"""Built-in rules: conditions derived from device health and the model's status each tick."""

from __future__ import annotations

from collections.abc import Iterable

from aidc.config import Site
from aidc.metrics import DeviceHealth
from alerts.evaluate import Condition


def device_unreachable(site: Site, health: Iterable[DeviceHealth]) -> list[Condition]:
    """Active once a device missed ``unreachable_intervals`` polls in a row; clears on the
    first good poll (so the resolved notice is not delayed)."""
    n = site.alerts.unreachable_intervals
    return [
        Condition(
            rule="device_unreachable",
            labels={"site": site.site, "device": h.id, "kind": h.kind},
            active=h.failures >= n,
            value=float(h.failures),
            severity="critical",
            summary=f"{h.kind} {h.id} has not answered {h.failures} polls: {h.error}",
        )
        for h in health
    ]


def builtin_conditions(site: Site, health: Iterable[DeviceHealth], status, now: float) -> list[Condition]:
    return device_unreachable(site, health)
