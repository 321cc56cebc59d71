"""The model evaluated from the store alone: what `aidc headroom` / `aidc whatif` answer on
any host that can read the site's store, with no running web app (the store is the seam)."""

from __future__ import annotations

import time

import numpy as np

from aidc.config import Site
from aidc.derive import SiteModel, SiteStatus
from aidc.metrics import STALE_AFTER_POLLS, Sample
from aidc.store import Store


class NoRecentData(Exception):
    pass


def latest_from_store(
    site: Site, store: Store, now: float, keys: frozenset[str] | None = None
) -> dict[tuple[str, str], Sample]:
    """The newest sample of every device series, keyed like the runtime's latest view; a
    sample older than 2.5 poll intervals is not taken (the runtime would call it stale), with
    the writer's flush interval on top: a sample reaches the store that much after the
    runtime has it. With ``keys``, only the series with those keys."""
    horizon_s = STALE_AFTER_POLLS * max(site.poll_s(d) for d in site.devices) + site.store.flush_s
    out = store.latest(now - horizon_s, keys)
    if not out:
        raise NoRecentData(
            f"no samples newer than {horizon_s:g} s in the store: is `aidc run` collecting?"
        )
    return out


def rack_power_history(model: SiteModel, store: Store, now: float) -> list[tuple[float, np.ndarray]]:
    """Rack power (A + B feeds) per model tick over the peak window, from the PDU series: NaN
    where a feed has no point in a tick."""
    site = model.site
    start, every = now - site.model.peak_window_s, site.model.tick_s
    history = store.history("pdu", "power_kw", start, now, every_s=every, labels={})
    times = sorted({t for series in history for t, _ in series.points})
    column = {pdu: i for i, pdu in enumerate(dict.fromkeys(model.feed_a + model.feed_b)) if pdu}
    kw = np.full((len(times), len(column) + 1), np.nan)  # tick x PDU, and a last column of
    kw[:, -1] = 0.0  # zeros: a rack without feed B draws nothing through it
    row = {t: i for i, t in enumerate(times)}
    for series in history:
        if (i := column.get(series.tags.get("device", ""))) is not None:
            kw[[row[t] for t, _ in series.points], i] = [v for _, v in series.points]
    feed_b = [column[b] if b else -1 for b in model.feed_b]
    rack_kw = kw[:, [column[a] for a in model.feed_a]] + kw[:, feed_b]
    return list(zip(times, rack_kw))


def status_from_store(site: Site, store: Store, now: float | None = None) -> tuple[SiteModel, SiteStatus]:
    now = time.time() if now is None else now
    model = SiteModel(site)
    latest = latest_from_store(site, store, now, model.series_read())
    model.peaks.extend(rack_power_history(model, store, now))
    return model, model.evaluate(latest, now)
