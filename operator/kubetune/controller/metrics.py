"""Prometheus metrics of the operator (served by `kubetune operator --metrics-port`)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.spec.status import Phase


class OperatorMetrics:
    """Jobs by phase, reconcile latency and outcomes, gang restarts, pods created; one registry per process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Gauge(
            "kubetune_finetunejobs",
            "FineTuneJobs by phase (seen by this operator)",
            ["phase"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time to reconcile one FineTuneJob (reads, decisions, writes)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors_total",
            "Reconciles that failed and were retried",
            registry=self.registry,
        )
        self.restarts = Counter(
            "kubetune_gang_restarts_total", "Gang restarts (all workers recreated)", registry=self.registry
        )
        self.pods_created = Counter(
            "kubetune_worker_pods_created_total", "Worker pods created", registry=self.registry
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in Phase:
            self.jobs.labels(phase=str(phase)).set(0)

    def observe_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Record the phase of job `key` (None: the job is gone) and refresh the per-phase gauge."""
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = {str(p): 0 for p in Phase}
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
        for name, count in counts.items():
            self.jobs.labels(phase=name).set(count)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics over HTTP in a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
