"""Prometheus metrics of one serving process (one registry per app, so tests can build many)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from service.domain import queue_stats
from service.domain.queue_stats import BATCH_BUCKETS, JOB_BUCKETS, WAIT_BUCKETS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _QueueCollector:
    """Reads the forget queue from the database at scrape time (every process sees the same)."""

    def __init__(self, read: Callable[[], dict[str, float]]):
        self.read = read

    def collect(self):
        try:
            values = self.read()
        except Exception:  # a scrape must not fail because the database is briefly away
            return
        pending = GaugeMetricFamily(
            "e2urec_forget_requests_open", "Forget requests not yet completed", labels=["status"]
        )
        for status, count in values.items():
            pending.add_metric([status], count)
        yield pending


def _histogram(name: str, doc: str, h: queue_stats.Histogram, buckets: tuple):
    family = HistogramMetricFamily(name, doc)
    counts = [(str(float(b)), c) for b, c in zip(buckets, h.cumulative, strict=True)]
    family.add_metric([], [*counts, ("+Inf", h.count)], h.total)
    return family


class _JobCollector:
    """Job durations, batch sizes, failures and request waits, from the database at scrape
    time: the worker runs in other processes, the database is what they share. The database
    aggregates (service/domain/queue_stats.py): a scrape reads a few rows, not the history."""

    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def collect(self):
        try:
            data = self.read()
        except Exception:
            return
        by_status = GaugeMetricFamily(
            "e2urec_jobs", "Unlearning jobs by kind and status", labels=["kind", "status"]
        )
        for kind, status, n in sorted(data["jobs"]):
            by_status.add_metric([kind, status], n)
        yield by_status
        yield _histogram(
            "e2urec_job_duration_seconds",
            "Succeeded unlearning jobs, start to finish",
            data["durations"],
            JOB_BUCKETS,
        )
        yield _histogram(
            "e2urec_batch_size",
            "Forget requests per unlearning batch",
            data["sizes"],
            BATCH_BUCKETS,
        )
        yield _histogram(
            "e2urec_forget_request_wait_seconds",
            "Completed forget requests, accepted to completed",
            data["waits"],
            WAIT_BUCKETS,
        )
        oldest = GaugeMetricFamily(
            "e2urec_oldest_pending_request_seconds", "Age of the oldest pending forget request"
        )
        oldest.add_metric([], data["oldest_pending"])
        yield oldest
        oldest_open = GaugeMetricFamily(
            "e2urec_oldest_open_request_seconds",
            "Age of the oldest forget request not completed (pending, scheduled, running or "
            "failed): alert well before E2UREC_FORGET_DEADLINE_SECONDS",
        )
        oldest_open.add_metric([], data["oldest_open"])
        yield oldest_open


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "e2urec_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "e2urec_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_adapter = Gauge(
            "e2urec_active_adapter_version", "Adapter version serving (0: none)", registry=r
        )
        self.active_base = Gauge(
            "e2urec_active_base_version", "Base model version serving", registry=r
        )
        self.swaps = Counter("e2urec_model_swaps", "Model swaps by outcome", ["result"], registry=r)
        self.behind_registry = Gauge(
            "e2urec_serving_behind_registry",
            "1 while this process cannot serve the registry's active version (it then answers "
            "without personalisation and /ready is 503)",
            registry=r,
        )
        self.unpersonalised = Counter(
            "e2urec_unpersonalised_answers",
            "GET /recommend answered with popular items, by reason",
            ["reason"],
            registry=r,
        )
        self.engine_dropped = Counter(
            "e2urec_engine_dropped_requests",
            "Requests skipped unscored because their client gave up (timeout, disconnect)",
            registry=r,
        )
        self.engine_restarts = Counter(
            "e2urec_engine_restarts", "Inference loops found dead and restarted", registry=r
        )
        self.swap_pause = Histogram(
            "e2urec_model_swap_pause_seconds",
            "Time serving paused between two batches to apply a swap",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )
        self.swap_load = Histogram(
            "e2urec_model_swap_load_seconds",
            "Time to read and verify a new version off the request path",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.batch_rows = Histogram(
            "e2urec_engine_batch_rows",
            "Candidate rows per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_requests = Histogram(
            "e2urec_engine_batch_requests",
            "Requests sharing one model batch",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32),
            registry=r,
        )

    def watch_queue(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_QueueCollector(read))

    def watch_jobs(self, read: Callable[[], dict]) -> None:
        self.registry.register(_JobCollector(read))

    def on_batch(self, requests: int, rows: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)
