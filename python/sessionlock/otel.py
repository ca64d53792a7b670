"""OpenTelemetry bridge: sessionlock's metrics as observable instruments.

    from sessionlock import otel
    otel.instrument()           # the global MeterProvider, or instrument(meter_provider=...)

Reads the same native snapshots as the Prometheus collector (``sessionlock.metrics``), at
collection time. OpenTelemetry has no asynchronous histogram, so the wait and hold
histograms are bridged as their count and total time (observable counters); for quantiles
use the Prometheus exposition. Needs ``opentelemetry-api`` (extra ``sessionlock[otel]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Optional

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from sessionlock import _sessionlock as _native

if TYPE_CHECKING:
    from sessionlock._sessionlock import _MetricsSnapshot

__all__ = ["instrument"]

_Key = tuple[tuple[str, str], ...]


def _sum(rows: Iterable[tuple[dict[str, str], float]]) -> list[Observation]:
    """One observation per attribute set (objects sharing a name are summed)."""
    acc: dict[_Key, float] = {}
    for attrs, v in rows:
        key = tuple(sorted(attrs.items()))
        acc[key] = acc.get(key, 0.0) + v
    return [Observation(v, dict(k)) for k, v in sorted(acc.items())]


def _observe(
    rows: Callable[[_MetricsSnapshot], Iterable[tuple[dict[str, str], float]]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return _sum(r for s in _native._metric_snapshots() for r in rows(s))

    return callback


def _hist(
    wait: bool, count: bool
) -> Callable[[_MetricsSnapshot], list[tuple[dict[str, str], float]]]:
    """Rows of a wait (per outcome) or hold histogram: its count, or its total seconds."""

    def pick(h: tuple[list[int], float]) -> float:
        return float(sum(h[0])) if count else h[1]

    def rows(s: _MetricsSnapshot) -> list[tuple[dict[str, str], float]]:
        attrs = {"kind": s["kind"], "name": s["name"]}
        if not wait:
            return [(attrs, pick(s["hold"]))]
        return [
            ({**attrs, "outcome": "acquired"}, pick(s["wait_acquired"])),
            ({**attrs, "outcome": "timeout"}, pick(s["wait_timeout"])),
        ]

    return rows


def instrument(meter_provider: Optional[MeterProvider] = None) -> None:
    """Creates sessionlock's observable instruments on ``meter_provider`` (default: the
    global one) and starts timing lock holds (as ``sessionlock.metrics.register()`` does).
    Call it once per provider."""
    meter = otel_metrics.get_meter("sessionlock", _native.__version__, meter_provider)
    counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
    counter(
        "sessionlock.lock.wait.count",
        [_observe(_hist(wait=True, count=True))],
        unit="{acquire}",
        description="Lock waits that ended (outcome=acquired or timeout).",
    )
    counter(
        "sessionlock.lock.wait.time",
        [_observe(_hist(wait=True, count=False))],
        unit="s",
        description="Total time spent waiting for locks.",
    )
    counter(
        "sessionlock.lock.hold.count",
        [_observe(_hist(wait=False, count=True))],
        unit="{hold}",
        description="Lock holds that ended (timed since instrument()/register()).",
    )
    counter(
        "sessionlock.lock.hold.time",
        [_observe(_hist(wait=False, count=False))],
        unit="s",
        description="Total time locks were held.",
    )
    counter(
        "sessionlock.lock.lost",
        [_observe(lambda s: [({"name": s["name"]}, s["lost"])] if s["lost"] is not None else [])],
        unit="{lock}",
        description="Locks lost while held.",
    )
    gauge(
        "sessionlock.lock.fallback_active",
        [
            _observe(
                lambda s: (
                    [({"name": s["name"]}, float(s["fallback_active"]))]
                    if s["fallback_active"] is not None
                    else []
                )
            )
        ],
        description="1 while a RedisLock serves the process-local fallback.",
    )
    gauge(
        "sessionlock.sessions",
        [
            _observe(
                lambda s: (
                    [({"name": s["name"]}, s["sessions"])] if s["sessions"] is not None else []
                )
            )
        ],
        unit="{session}",
        description="Sessions held in memory by a BaseSessionManager.",
    )
    counter(
        "sessionlock.session.events",
        [
            _observe(
                lambda s: [({"name": s["name"], "event": e}, n) for e, n in s["events"].items()]
            )
        ],
        unit="{event}",
        description="Session hits, misses, creations, expiries, evictions, corrupted values.",
    )
    counter(
        "sessionlock.redis.errors",
        [
            _observe(
                lambda s: (
                    [({"name": s["name"]}, s["redis_errors"])]
                    if s["redis_errors"] is not None
                    else []
                )
            )
        ],
        unit="{error}",
        description="Redis calls that failed.",
    )
    _native._enable_metrics(True)
