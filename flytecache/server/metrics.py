"""Prometheus metrics of one server app, in its own registry (never the global one)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["RESERVATION_OUTCOMES", "Metrics"]

log = logging.getLogger("flytecache.server")

RESERVATION_OUTCOMES = ("acquired", "extended", "taken_over", "held_by_other", "released")
RPC_NAMES = ("Get", "Put", "Delete", "GetOrExtendReservation", "ReleaseReservation")

# From well under a millisecond (a cached read) to the SQLite busy timeout and beyond.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _EntryCount(Collector):
    """``flytecache_entries``: counted when scraped (one indexed COUNT, off the event loop)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("flytecache_entries", "Cache entries in the database.")]

    def collect(self) -> Iterator[Metric]:
        try:
            value = self._count()
        except Exception:
            log.warning("could not count the cache entries for /metrics", exc_info=True)
            return
        yield GaugeMetricFamily(
            "flytecache_entries", "Cache entries in the database.", value=float(value)
        )


class _Limits(Collector):
    """The connection guard's and the body budget's state, read when scraped."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        yield GaugeMetricFamily(
            "flytecache_connections", "Open connections.", value=values["connections"]
        )
        yield GaugeMetricFamily(
            "flytecache_request_bytes_in_flight",
            "Request body bytes held (see --max-inflight-bytes).",
            value=values["bytes_in_flight"],
        )
        yield from _counters(values, _LIMIT_COUNTERS)


_LIMIT_COUNTERS = (
    ("connections_evicted", "Idle connections closed to make room at --max-connections."),
    ("connections_refused", "Connections refused with 503: every one was busy."),
    ("connections_timed_out", "Connections closed for missing --header-timeout."),
    ("requests_over_budget", "Requests refused by --max-inflight-bytes."),
)


def _counters(
    values: dict[str, float], table: tuple[tuple[str, str], ...]
) -> Iterator[CounterMetricFamily]:
    """``flytecache_<name>`` counters from ``values``, one per ``(name, help)`` of ``table``."""
    for name, help_text in table:
        yield CounterMetricFamily(f"flytecache_{name}", help_text, value=values[name])


_EVICTION_COUNTERS = (
    ("evicted_entries", "Entries removed by eviction to keep --max-size/--max-entries."),
    ("evicted_bytes", "Payload bytes (entries.size) removed by eviction."),
    ("eviction_batches", "Eviction batches (one short write transaction each)."),
    ("blobs_deleted", "Output blobs of evicted entries deleted (--delete-blobs)."),
    ("blob_bytes_deleted", "Bytes of the output blobs deleted (--delete-blobs)."),
    ("blob_delete_failures", "Output blobs of evicted entries that could not be deleted."),
    ("recency_flushed", "Read times written for least-recently-used eviction."),
    ("recency_dropped", "Reads not recorded because the pending set was full (recency only)."),
)


class _Eviction(Collector):
    """The store evictor's counters (``CacheStore.evictor.stats``), read when scraped."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        yield from _counters(self._read(), _EVICTION_COUNTERS)


class Metrics:
    """Request, latency and reservation metrics; ``entry_count`` feeds the entries gauge."""

    def __init__(self, entry_count: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flytecache_requests",
            "CacheService requests by RPC and Connect code (ok on success).",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flytecache_request_duration_seconds",
            "CacheService request latency by RPC and Connect code, body read to response sent.",
            ["rpc", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "flytecache_requests_in_flight",
            "CacheService requests being served.",
            registry=self.registry,
        )
        self.reservations = Counter(
            "flytecache_reservations",
            "Reservation decisions: acquired, extended, taken_over, held_by_other, released.",
            ["outcome"],
            registry=self.registry,
        )
        # The labelled children by label values: looking them up by labels() again for every
        # request cost 3.4 of the 5.2 us that counting a request took.
        self._outcomes = {
            outcome: self.reservations.labels(outcome) for outcome in RESERVATION_OUTCOMES
        }
        self._observed: dict[tuple[str, str], tuple[Any, Any]] = {}
        for rpc in RPC_NAMES:
            self.requests.labels(rpc, "ok")
        if entry_count is not None:
            self.registry.register(_EntryCount(entry_count))

        self.wal_bytes: Gauge | None = None
        self.wal_blocked_seconds: Gauge | None = None
        self.wal_checkpoints_blocked: Counter | None = None

    def enable_wal(self) -> None:
        """Add the SQLite WAL metrics (fed by the server's watch, see ``server/watch.py``)."""
        if self.wal_bytes is not None:
            return
        self.wal_bytes = Gauge(
            "flytecache_wal_bytes",
            "Size of the SQLite -wal file at the last watch tick.",
            registry=self.registry,
        )
        self.wal_blocked_seconds = Gauge(
            "flytecache_wal_checkpoint_blocked_seconds",
            "How long checkpoints have been unable to pass a reader's snapshot (0: they are not).",
            registry=self.registry,
        )
        self.wal_checkpoints_blocked = Counter(
            "flytecache_wal_checkpoints_blocked",
            "Watch checkpoints (one per tick) that could not copy the WAL past a reader that "
            "has held its snapshot since the previous tick.",
            registry=self.registry,
        )

    def watch_limits(self, read: Callable[[], dict[str, float]]) -> None:
        """Export what ``read`` returns: ``connections``, ``bytes_in_flight`` (gauges) and
        ``connections_evicted``, ``connections_refused``, ``connections_timed_out``,
        ``requests_over_budget`` (counters)."""
        self.registry.register(_Limits(read))

    def watch_eviction(self, read: Callable[[], dict[str, float]]) -> None:
        """Export the eviction counters ``read`` returns (``EvictionStats.snapshot``)."""
        self.registry.register(_Eviction(read))

    def observe(self, rpc: str, code: str, seconds: float) -> None:
        """Count one finished request."""
        children = self._observed.get((rpc, code))
        if children is None:
            children = (self.requests.labels(rpc, code), self.latency.labels(rpc, code))
            self._observed[(rpc, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def reservation(self, outcome: str) -> None:
        """Count one reservation decision."""
        child = self._outcomes.get(outcome)
        if child is None:
            child = self.reservations.labels(outcome)
        child.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition (may query the database: call off the event loop)."""
        return generate_latest(self.registry)
