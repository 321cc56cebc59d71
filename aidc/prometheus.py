"""aidc's own health for Prometheus (`GET /metrics`), through prometheus_client: the library
writes the format, its escaping and its numbers; names and units follow Prometheus's
conventions (base units such as seconds, `_total` on counters)."""

from __future__ import annotations

import time
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from aidc.api import REACHABLE
from aidc.core.metrics import POLL_DELAY_BUCKETS_S

if TYPE_CHECKING:
    from aidc.runtime import Runtime


def exposition(runtime: Runtime, accept: str) -> tuple[bytes, str]:
    """The body and its content type, in the format the scraper's Accept header asks for
    (Prometheus text 0.0.4 or 1.0.0, or OpenMetrics)."""
    encode, content_type = choose_encoder(accept)
    return encode(RuntimeMetrics(runtime)), content_type  # type: ignore[arg-type]


Counter, Gauge, Histogram = CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
PER_DEVICE = [  # (family, name, help, value of a DeviceHealth)
    (Counter, "aidc_polls", "Polls attempted per device.", lambda h: h.polls_total),
    (Counter, "aidc_poll_errors", "Polls that failed per device.", lambda h: h.errors_total),
    (Gauge, "aidc_device_up", "1 when the last poll succeeded.",
     lambda h: float(h.state in REACHABLE)),
    (Gauge, "aidc_poll_duration_seconds", "Duration of the last good poll.",
     lambda h: h.last_poll_ms / 1000),
    (Gauge, "aidc_poll_backoff_seconds", "Wait before the next poll (grows while down).",
     lambda h: h.retry_in_s),
]


class RuntimeMetrics:
    """A prometheus_client collector, read from the runtime at each scrape."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self):
        rt, w = self.runtime, self.runtime.writer
        health = list(rt.health.values())
        for family, name, help_, value in PER_DEVICE:
            metric = family(name, help_, labels=["device"])
            for h in health:
                metric.add_metric([h.id], value(h))
            yield metric
        yield from (
            Gauge("aidc_spool_samples", "Samples waiting on disk for the store.",
                  value=w.spooled_samples()),
            Counter("aidc_spool_dropped_samples", "Samples dropped past the spool bound.",
                    value=w.dropped_samples),
            Counter("aidc_store_rejected_samples", "Samples the store refused (kept in the "
                    "spool file's rejected table).", value=w.rejected_samples),
            Gauge("aidc_store_up", "1 when the last store write succeeded.",
                  value=float(w.store_up)),
            Gauge("aidc_store_behind_seconds", "Age of the oldest sample the store has not "
                  "taken yet (queued, being written or spooled).",
                  value=rt.store_behind_s(time.time())),
            Counter("aidc_model_ticks", "Model ticks run.", value=rt.ticks),
            Gauge("aidc_model_tick_seconds", "Duration of the last model tick.",
                  value=rt.last_tick_ms / 1000),
            Gauge("aidc_alerting_tick_seconds", "Of the last tick, the rules, inhibition, "
                  "silences and alert state.", value=rt.last_alerting_ms / 1000),
            Gauge("aidc_notifier_backlog", "Notifications waiting for delivery.",
                  value=rt.notifier_backlog),
            Gauge("aidc_notifier_oldest_seconds", "Age of the oldest waiting notification.",
                  value=rt.notifier_oldest_s),
            Gauge("aidc_notifier_dead_letters", "Notifications a receiver refused for good.",
                  value=rt.notifier_dead_letters),
            Gauge("aidc_notifier_groups_held", "Alert groups holding changes until their "
                  "group_wait or group_interval ends.", value=rt.notifier_groups_held),
            Histogram("aidc_poll_start_delay_seconds", "How late polls started against when "
                      "they were due, every device's.", buckets=[
                          *zip(map(str, (*POLL_DELAY_BUCKETS_S, "+Inf")),
                               accumulate(rt.poll_timing.counts), strict=True)],
                      sum_value=rt.poll_timing.late_s),
            Counter("aidc_poll_intervals_missed", "Poll intervals skipped because a poll ran "
                    "into the next one.", value=rt.poll_timing.missed),
            Gauge("aidc_event_loop_lag_seconds", "Worst delay of the polls' and the model's "
                  "event loop over the last minute (a blocked loop delays every poll).",
                  value=rt.loop_lag_s),
        )
