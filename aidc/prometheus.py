"""aidc's own health for Prometheus (`GET /metrics`), through prometheus_client: the library
writes the format, its escaping and its numbers; names and units follow Prometheus's
conventions (base units such as seconds, `_total` on counters)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from aidc.api import REACHABLE

if TYPE_CHECKING:
    from aidc.runtime import Runtime


def exposition(runtime: Runtime, accept: str) -> tuple[bytes, str]:
    """The body and its content type, in the format the scraper's Accept header asks for
    (Prometheus text 0.0.4 or 1.0.0, or OpenMetrics)."""
    encode, content_type = choose_encoder(accept)
    return encode(RuntimeMetrics(runtime)), content_type  # type: ignore[arg-type]


class RuntimeMetrics:
    """A prometheus_client collector, read from the runtime at each scrape."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self):
        rt, hs = self.runtime, list(self.runtime.health.values())

        def per_device(family, value):
            for h in hs:
                family.add_metric([h.id], value(h))
            return family

        def one(family, value):
            family.add_metric([], value)
            return family

        device = ["device"]
        yield per_device(CounterMetricFamily("aidc_polls", "Polls attempted per device.",
                                             labels=device), lambda h: h.polls_total)
        yield per_device(CounterMetricFamily("aidc_poll_errors", "Polls that failed per device.",
                                             labels=device), lambda h: h.errors_total)
        yield per_device(GaugeMetricFamily("aidc_device_up", "1 when the last poll succeeded.",
                                           labels=device), lambda h: float(h.state in REACHABLE))
        yield per_device(GaugeMetricFamily("aidc_poll_duration_seconds", "Duration of the last "
                                           "good poll.", labels=device), lambda h: h.last_poll_ms / 1000)
        yield per_device(GaugeMetricFamily("aidc_poll_backoff_seconds", "Wait before the next "
                                           "poll (grows while down).", labels=device),
                         lambda h: h.retry_in_s)
        w = rt.writer
        yield one(GaugeMetricFamily("aidc_spool_samples", "Samples waiting on disk for the "
                                    "store."), w.spooled_samples())
        yield one(CounterMetricFamily("aidc_spool_dropped_samples", "Samples dropped past the "
                                      "spool bound."), w.dropped_samples)
        yield one(CounterMetricFamily("aidc_store_rejected_samples", "Samples the store refused "
                                      "(kept in the spool file's rejected table)."),
                  w.rejected_samples)
        yield one(GaugeMetricFamily("aidc_store_up", "1 when the last store write succeeded."),
                  float(w.store_up))
        yield one(CounterMetricFamily("aidc_model_ticks", "Model ticks run."), rt.ticks)
        yield one(GaugeMetricFamily("aidc_model_tick_seconds", "Duration of the last model "
                                    "tick."), rt.last_tick_ms / 1000)
        yield one(GaugeMetricFamily("aidc_alerting_tick_seconds", "Of the last tick, the rules, "
                                    "inhibition, silences and alert state."),
                  rt.last_alerting_ms / 1000)
        yield one(GaugeMetricFamily("aidc_notifier_backlog", "Notifications waiting for "
                                    "delivery."), rt.notifier_backlog)
        yield one(GaugeMetricFamily("aidc_notifier_oldest_seconds", "Age of the oldest waiting "
                                    "notification."), rt.notifier_oldest_s)
        yield one(GaugeMetricFamily("aidc_notifier_dead_letters", "Notifications a receiver "
                                    "refused for good."), rt.notifier_dead_letters)
        yield one(GaugeMetricFamily("aidc_event_loop_lag_seconds", "Worst delay of the polls' "
                                    "and the model's event loop over the last minute (a "
                                    "blocked loop delays every poll)."), rt.loop_lag_s)
