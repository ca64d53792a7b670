"""Prometheus metrics for every live sessionlock manager and lock.

    from sessionlock import metrics
    metrics.register()          # prometheus_client's default REGISTRY

One collector reads, at scrape time, every ``BaseSessionManager``, ``RedisSessionManager``,
``RedisLock`` and ``RecommendationLock`` still alive in this process (the native core tracks
them by weak reference: a manager Python has collected is gone from the next scrape).
Between scrapes the cost is a few relaxed atomic adds in the native core; hold times are
timed only once ``register()`` has run. Names, types, labels and buckets are fixed by
DESIGN.md ("Metrics") and explained in docs/metrics.md.

Needs the optional extra ``sessionlock[prometheus]``; ``import sessionlock`` never does.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Optional

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from sessionlock import _sessionlock as _native

if TYPE_CHECKING:
    from sessionlock._sessionlock import _MetricsSnapshot

__all__ = ["BUCKETS", "SessionlockCollector", "quantile", "register", "unregister"]

#: Histogram upper bounds in seconds (50 µs to 60 s); ``+Inf`` follows.
BUCKETS: tuple[float, ...] = _native._METRIC_BUCKETS
_LE = [repr(b) for b in BUCKETS] + ["+Inf"]  # as prometheus_client writes `le`

_Hist = tuple[list[int], float]


def _add_hist(into: dict[tuple[str, ...], _Hist], key: tuple[str, ...], h: _Hist) -> None:
    counts, total = into.get(key, ([0] * len(_LE), 0.0))
    into[key] = ([a + b for a, b in zip(counts, h[0])], total + h[1])


def _add(into: dict[tuple[str, ...], float], key: tuple[str, ...], v: float) -> None:
    into[key] = into.get(key, 0) + v


class SessionlockCollector(Collector):
    """Turns the native snapshots into metric families. Objects sharing a ``name`` (two
    instances of one manager class, say) are summed into one series, so the exposition
    never repeats a label set; their gauges add up too (``fallback_active`` takes the max).
    """

    def describe(self) -> Iterable[Metric]:
        # Families without samples: lets the registry check names without a scrape.
        return list(self._families([]))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(_native._metric_snapshots()))

    @staticmethod
    def _families(snaps: Sequence[_MetricsSnapshot]) -> Iterator[Metric]:
        wait: dict[tuple[str, ...], _Hist] = {}
        hold: dict[tuple[str, ...], _Hist] = {}
        lost: dict[tuple[str, ...], float] = {}
        fallback: dict[tuple[str, ...], float] = {}
        sessions: dict[tuple[str, ...], float] = {}
        events: dict[tuple[str, ...], float] = {}
        errors: dict[tuple[str, ...], float] = {}
        for s in snaps:
            kind, name = s["kind"], s["name"]
            _add_hist(wait, (kind, name, "acquired"), s["wait_acquired"])
            _add_hist(wait, (kind, name, "timeout"), s["wait_timeout"])
            _add_hist(hold, (kind, name), s["hold"])
            if s["lost"] is not None:
                _add(lost, (name,), s["lost"])
            if s["fallback_active"] is not None:
                fallback[(name,)] = max(fallback.get((name,), 0), float(s["fallback_active"]))
            if s["sessions"] is not None:
                _add(sessions, (name,), s["sessions"])
            for event, n in s["events"].items():
                _add(events, (name, event), n)
            if s["redis_errors"] is not None:
                _add(errors, (name,), s["redis_errors"])

        def hist(
            metric: str, doc: str, labels: list[str], data: dict[tuple[str, ...], _Hist]
        ) -> Metric:
            fam = HistogramMetricFamily(metric, doc, labels=labels)
            for key, (counts, total) in sorted(data.items()):
                cumulative, buckets = 0, []
                for le, n in zip(_LE, counts):
                    cumulative += n
                    buckets.append((le, float(cumulative)))
                fam.add_metric(list(key), buckets, sum_value=total)
            return fam

        def simple(
            family: type[CounterMetricFamily] | type[GaugeMetricFamily],
            metric: str,
            doc: str,
            labels: list[str],
            data: dict[tuple[str, ...], float],
        ) -> Metric:
            fam = family(metric, doc, labels=labels)
            for key, v in sorted(data.items()):
                fam.add_metric(list(key), v)
            return fam

        yield hist(
            "sessionlock_lock_wait_seconds",
            "Time from asking for a lock to getting it (outcome=acquired) or giving up "
            "(outcome=timeout); an uncontended in-process acquire counts as 0.",
            ["kind", "name", "outcome"],
            wait,
        )
        yield hist(
            "sessionlock_lock_hold_seconds",
            "Time a lock was held, first acquire to last release (timed since register()).",
            ["kind", "name"],
            hold,
        )
        yield simple(
            CounterMetricFamily,
            "sessionlock_lock_lost",
            "Locks whose lease ran out or was taken over while held.",
            ["name"],
            lost,
        )
        yield simple(
            GaugeMetricFamily,
            "sessionlock_lock_fallback_active",
            "1 while this RedisLock's last Redis call failed and it uses the process-local lock.",
            ["name"],
            fallback,
        )
        yield simple(
            GaugeMetricFamily,
            "sessionlock_sessions",
            "Sessions held in memory by a BaseSessionManager (expired ones until reclaimed).",
            ["name"],
            sessions,
        )
        yield simple(
            CounterMetricFamily,
            "sessionlock_session_events",
            "Session lookups and lifecycle events: hit, miss, create, expired, evicted, corrupted.",
            ["name", "event"],
            events,
        )
        yield simple(
            CounterMetricFamily,
            "sessionlock_redis_errors",
            "Redis calls that failed (connection, timeout or server error).",
            ["name"],
            errors,
        )


_lock = threading.Lock()
# registry -> our collector in it; the registry is not kept alive by being listed here.
_registered: weakref.WeakKeyDictionary[CollectorRegistry, SessionlockCollector] = (
    weakref.WeakKeyDictionary()
)


def register(registry: Optional[CollectorRegistry] = None) -> SessionlockCollector:
    """Adds the sessionlock collector to ``registry`` (default: prometheus_client's REGISTRY)
    and starts timing lock holds. Calling it again for the same registry returns the same
    collector. The first call may take up to 20 ms (clock calibration, GIL released)."""
    reg = REGISTRY if registry is None else registry
    with _lock:
        collector = _registered.get(reg)
        if collector is not None:
            return collector
        collector = SessionlockCollector()
        reg.register(collector)
        _registered[reg] = collector
    _native._enable_metrics(True)  # one user per registry (outside _lock: may sleep)
    return collector


def unregister(registry: Optional[CollectorRegistry] = None) -> None:
    """Removes the collector from ``registry``; hold timing stops once no registry (and no
    ``otel.instrument()``) uses it. Counters and histograms keep their values (a later
    ``register()`` continues them)."""
    reg = REGISTRY if registry is None else registry
    with _lock:
        collector = _registered.pop(reg, None)
        if collector is None:
            return
        reg.unregister(collector)
    _native._enable_metrics(False)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Estimates the ``q``-quantile from cumulative ``(upper_bound, count)`` pairs ending
    with ``(inf, total)``, interpolating linearly inside a bucket like PromQL's
    ``histogram_quantile``. NaN when there are no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: its bound, as PromQL does
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound
