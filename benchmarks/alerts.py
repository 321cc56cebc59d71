"""The alerting stage of the runtime's tick on a 10,000-rack site: rules, inhibition,
silences and the evaluator, as `Runtime.tick` runs them.

Baseline, measured in the same run: the rest of the same tick (the model's evaluation and
its derived series, in a worker thread), as the runtime times both parts. Also the longest
the event loop waited during a tick (the polls would have): the copy of the latest samples
and the alerting stage run on it. Three states: a quiet site; a storm (a pump lost on
every CDU, so every rack is over its loop limit: 10,000 symptoms for the inhibition to hold
back); and the quiet site with a rule of its own over every PDU's currents, its inlet and
each outlet (600,000 series at 10,000 racks), none past its level, judged as the runtime
does (one array) and, its baseline in the same run, by looking each series up (before).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from aidc.cli import RUN_GC_THRESHOLDS
from aidc.core.config import RuleSettings, Site
from aidc.core.sitegen import generate
from aidc.runtime import Runtime
from benchmarks.common import device_samples, write_result
from simulators.physics import SitePhysics

RACKS = int(os.environ.get("AIDC_BENCH_RACKS", "10000"))  # smaller to try it out
TICKS = 15
RESULT = Path(__file__).parent / "results" / "alerts.json"
TARGET_MS = 50.0  # the whole tick, and its alerting stage
LOOP_HELD_TARGET_MS = 20.0
STATES = ("quiet", "storm", "rule")  # rule_scan is the rule's baseline


async def timed_ticks(runtime: Runtime, latest: dict, start: float) -> tuple[float, float, float, int]:
    """Median ms of the whole tick, of its alerting stage (the runtime times both) and of the
    longest the event loop waited meanwhile (its polls would have), and the alerts active
    after the last tick."""
    whole, alerting, blocked = [], [], []
    runtime.latest = latest  # stamped far ahead: fresh at every tick, never re-stamped
    devices = runtime.topology.device_by_id
    for key, s in latest.items():  # and the model's inputs, as the polls would have put them
        if key[1] in runtime.model_inputs.keys_read:
            runtime.model_inputs.put(key, s)
        if s.measurement in runtime._metric_rules:  # and the series the rules over a metric watch
            runtime._watch(devices[key[0]], key[1], s)
    for n in range(TICKS):
        worst = [0.0]
        watch = asyncio.create_task(loop_lag(worst))
        await asyncio.sleep(0)  # the watch is running
        await runtime.tick(start + n * runtime.site.model.tick_s)
        runtime._take_pending()  # as the writer takes them (the store is not timed here)
        await asyncio.sleep(0.005)  # the watch wakes and counts a hold at the tick's end
        watch.cancel()
        whole.append(runtime.last_tick_ms)
        alerting.append(runtime.last_alerting_ms)
        blocked.append(worst[0] * 1000)
    return (statistics.median(whole), statistics.median(alerting), statistics.median(blocked),
            len(runtime.evaluator.active_alerts()))


async def loop_lag(worst: list[float]) -> None:
    """The longest a 1 ms sleep overran: how long the loop was held."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], loop.time() - t - 0.001)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = Site.model_validate(yaml.safe_load(generate(RACKS)))
        physics = SitePhysics(site)
        physics.step()
        now = time.time()
        quiet = device_samples(site, physics, now + 86400)
        for loop in site.loops:  # a leak on one CDU of each loop: isolated, the rest
            physics.faults.leak.add(loop.cdus[0])  # in reserve, every rack over its limit
        physics.step()
        storm = device_samples(site, physics, now + 86400)

        # a rule of the site's own over every PDU's currents (its inlet and each outlet),
        # its levels above the highest: quiet, as a site's rules are nearly always
        highest = max(s.value for s in quiet.values()
                      if s.measurement == "pdu" and s.field == "current_a")
        watching = site.model_copy(update={"alerts": site.alerts.model_copy(update={
            "rules": {"pdu_current_high": RuleSettings(
                kind="pdu", metric="current_a", fires="above", warning=round(1.5 * highest),
                critical=round(2 * highest))}})})

        async def both() -> dict:
            results = {}
            for name, latest, at in (("quiet", quiet, site), ("storm", storm, site),
                                     ("rule", quiet, watching), ("rule_scan", quiet, watching)):
                runtime = Runtime(at, Path(tmp) / name)
                if name == "rule_scan":  # the baseline: each series watched looked up, one by one
                    runtime._watched = lambda rt=runtime: rt.watched_series
                gc.set_threshold(*RUN_GC_THRESHOLDS)  # as `aidc run` does once its runtime
                gc.freeze()  # is made
                await timed_ticks(runtime, latest, now)  # warm-up: caches, first notifications
                results[name] = await timed_ticks(runtime, latest, now + 3600)
                runtime.outbox.close()
            return results

        results = asyncio.run(both())

    figures, ratios = {}, {}
    print(f"alerting in the tick, {RACKS} racks (medians of {TICKS} ticks)")
    print(f"  {'state':<8}{'whole tick ms':>15}{'model ms':>10}{'alerting ms':>13}{'x model':>9}"
          f"{'loop held ms':>14}{'alerts':>8}")  # fmt: skip
    for name, (whole, alerting, held, active) in results.items():
        model = whole - alerting
        figures[f"{name}_tick_ms"] = round(whole, 1)
        figures[f"{name}_model_ms"] = round(model, 1)
        figures[f"{name}_alerting_ms"] = round(alerting, 1)
        figures[f"{name}_loop_held_ms"] = round(held, 1)
        figures[f"{name}_active_alerts"] = active
        ratios[f"{name}_alerting_vs_model"] = round(alerting / model, 2)
        print(f"  {name:<8}{whole:>15.1f}{model:>10.1f}{alerting:>13.1f}{alerting / model:>9.2f}"
              f"{held:>14.1f}{active:>8}")  # fmt: skip
    print(f"  targets: the whole tick and its alerting < {TARGET_MS:g} ms; loop held (the longest "
          f"the event loop, its polls, waited during a tick) <= {LOOP_HELD_TARGET_MS:g} ms")
    write_result(
        RESULT, machine_note="the runtime's tick, embedded store, no webhook", figures=figures,
        ratios=ratios, baseline="the rest of the same tick (model and derived series), same run",
        targets={f"{state}_{figure}": target for state in STATES for figure, target in (
            ("tick_ms", f"< {TARGET_MS:g}"), ("alerting_ms", f"<= {TARGET_MS:g}"),
            ("loop_held_ms", f"<= {LOOP_HELD_TARGET_MS:g}"))})


if __name__ == "__main__":
    main()
