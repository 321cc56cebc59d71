"""The model evaluated from the store alone: what `aidc headroom` / `aidc whatif` answer on
any host that can read the site's store, with no running web app (the store is the seam)."""

from __future__ import annotations

import time
from itertools import chain

import numpy as np

from aidc.core.config import Site
from aidc.core.derive import SWING_WINDOW_S, SiteModel, SiteStatus
from aidc.core.metrics import STALE_AFTER_POLLS, LatestValues
from aidc.core.store import Series, Store


class NoRecentData(Exception):
    pass


def latest_from_store(
    site: Site, store: Store, now: float, keys: frozenset[str] | None = None
) -> LatestValues:
    """The good value of the newest sample of every device series, keyed like the runtime's
    latest view; a sample older than 2.5 poll intervals is not taken (the runtime would call
    it stale), with the writer's flush interval on top: a sample reaches the store that much
    after the runtime has it. With ``keys``, only the series with those keys."""
    horizon_s = STALE_AFTER_POLLS * max(site.poll_s(d) for d in site.devices) + site.store.flush_s
    out = store.latest_values(now - horizon_s, keys)
    if not out:
        raise NoRecentData(
            f"no samples newer than {horizon_s:g} s in the store: is `aidc run` collecting?"
        )
    return out


def rack_power_history(model: SiteModel, store: Store, now: float) -> list[tuple[float, np.ndarray]]:
    """Each rack's power over the peak window, from the `rack` `power_kw` series the model
    writes every tick (so the same sum of feeds, or of outlets, the runtime used): tick by
    tick over the last minute, whose swings the backup model judges, and before it, each
    rack's maximum as one row stamped at the minute's start. A restarted runtime so holds
    that maximum until the minute's start ages out: up to the window less a minute longer
    than it would have, never shorter. A rack with no point in a row is NaN there."""
    window_s = model.site.model.peak_window_s
    start, recent = now - window_s, now - min(SWING_WINDOW_S, window_s)
    before = store.history("rack", "power_kw", start, recent, every_s=window_s, aggregate="max")
    ticks = store.history("rack", "power_kw", recent, now)
    column = {rack: i for i, rack in enumerate(model.rack_ids)}

    def flat(series: list[Series], at: float | None = None) -> tuple[np.ndarray, ...]:
        """Times (``at`` if given), rack columns and kW of every point, as arrays built
        without a Python object a point (120,000 points a minute at 10,000 racks)."""
        kept = [s for s in series if s.tags.get("rack") in column]
        t_kw = np.array(list(chain.from_iterable(s.points for s in kept)), float).reshape(-1, 2)
        racks = np.repeat([column[s.tags["rack"]] for s in kept], [len(s.points) for s in kept])
        return (t_kw[:, 0] if at is None else np.full(len(t_kw), at)), racks, t_kw[:, 1]

    times, racks, kw = (np.concatenate(x) for x in zip(flat(before, recent), flat(ticks)))
    if not len(times):
        return []
    rows, row_of = np.unique(times, return_inverse=True)
    rack_kw = np.full((len(rows), len(column)), np.nan)
    np.fmax.at(rack_kw, (row_of, racks.astype(np.intp)), kw)  # a tick at the minute's start
    return list(zip(rows.tolist(), rack_kw))


def status_from_store(site: Site, store: Store, now: float | None = None) -> tuple[SiteModel, SiteStatus]:
    now = time.time() if now is None else now
    model = SiteModel(site)
    latest = latest_from_store(site, store, now, model.series_read())
    model.peaks.extend(rack_power_history(model, store, now))
    return model, model.evaluate(latest, now)
