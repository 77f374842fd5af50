"""A realistic background for the side-by-side benchmark (issue 14): thousands of pods and hundreds of batch Jobs
that belong to neither system, already running when the rounds start, and what each controller paid while
they were made.

The background lives on KWOK nodes of its own (no GPUs, labelled `kubetune.bench/pool: background`), in one
namespace: Deployments of 500 replicas for the pods, and Jobs of one pod each (KWOK keeps their pods Running,
so the Jobs stay active and the Job controller keeps tracking them). A controller that watches only its own
pods pays nothing for them; one that watches (or caches) every pod pays in CPU, in bytes read from the API
server and in memory. `/proc/PID/io`'s `rchar` counts every byte a process read (sockets, so the watch
traffic, and files; these controllers read almost no files after they start).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from benchmarks.operator_scale import proc_stats
from tests.kube.harness import LocalCluster, wait_for

NAMESPACE = "background"
POOL_LABEL = "kubetune.bench/pool"
POOL = "background"
PODS_PER_NODE = 100  # KWOK nodes advertise 110 pods
REPLICAS_PER_DEPLOYMENT = 500


@dataclass(frozen=True)
class ProcessCost:
    """What one process used while the background was made."""

    cpu_seconds: float
    read_mb: float
    rss_mb: float  # VmRSS after
    peak_rss_mb: float  # VmHWM after


def read_bytes(pid: int) -> int:
    """Bytes the process has read so far (`rchar`: sockets and files)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no rchar line")


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def _pod_template(app: str, restart_policy: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app, "kubetune.bench/background": "true"}},
        "spec": {
            "nodeSelector": {POOL_LABEL: POOL},
            "restartPolicy": restart_policy,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/background:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }
            ],
        },
    }


def _count_pods(core: Any, field_selector: str | None = None) -> tuple[int, bool]:
    """(how many pods of the background namespace match, whether that count is exact): one page of one item,
    whose `remainingItemCount` gives the total when the list has no selector."""
    page = core.list_namespaced_pod(NAMESPACE, limit=1, field_selector=field_selector)
    remaining = page.metadata.remaining_item_count
    return len(page.items) + (remaining or 0), remaining is not None or not page.metadata._continue


def make(cluster: LocalCluster, pods: int, jobs: int, watched: dict[str, int]) -> dict[str, Any]:
    """Makes `pods` pods (Deployments) and `jobs` one-pod Jobs on nodes of their own, waits until every one of
    their pods runs, and returns how long that took and what each process of `watched` (name → pid) used
    meanwhile."""
    api = cluster.api_client()
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    batch: Any = client.BatchV1Api(api)
    nodes = math.ceil((pods + jobs) / PODS_PER_NODE)
    cluster.add_gpu_nodes(nodes, gpus=0, labels={POOL_LABEL: POOL})
    cluster.wait_for_nodes_ready(timeout=120)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    wait_for(lambda: core.read_namespaced_service_account("default", NAMESPACE), 30, "default SA")
    before = {name: (proc_stats(pid)[1], read_bytes(pid)) for name, pid in watched.items()}
    began = time.monotonic()
    left, index = pods, 0
    while left > 0:
        replicas = min(REPLICAS_PER_DEPLOYMENT, left)
        app = f"app-{index:03d}"
        apps.create_namespaced_deployment(
            NAMESPACE,
            {
                "metadata": {"name": app},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": app}},
                    "template": _pod_template(app, "Always"),
                },
            },
        )
        left, index = left - replicas, index + 1
    for index in range(jobs):
        batch.create_namespaced_job(
            NAMESPACE,
            {
                "metadata": {"name": f"batch-{index:04d}"},
                "spec": {"backoffLimit": 0, "template": _pod_template(f"batch-{index:04d}", "Never")},
            },
        )
    expected = pods + jobs

    def all_running() -> bool:
        total, exact = _count_pods(core)
        if not exact or total < expected:
            return False
        not_running, _ = _count_pods(core, "status.phase!=Running")
        return not_running == 0

    wait_for(all_running, 600 + expected / 10, f"{expected} background pods Running", interval=5.0)
    made_in = time.monotonic() - began
    time.sleep(10.0)  # the watches deliver the last events; resyncs, if any, show up here
    costs = {}
    for name, pid in watched.items():
        cpu_before, read_before = before[name]
        peak, cpu = proc_stats(pid)
        costs[name] = ProcessCost(
            cpu - cpu_before, (read_bytes(pid) - read_before) / 1e6, resident_mb(pid), peak
        )
    return {"pods": pods, "jobs": jobs, "nodes": nodes, "seconds": made_in, "costs": costs}


def report(background: dict[str, Any]) -> str:
    """The lines printed after the background is made."""
    lines = [
        f"background: {background['pods']} pods (Deployments) + {background['jobs']} Jobs on "
        f"{background['nodes']} nodes of their own, all Running in {background['seconds']:.0f} s; "
        "meanwhile (from the first create until 10 s after the last pod ran):",
        f"{'process':>28} {'CPU s':>8} {'read MB':>8} {'RSS MB':>8} {'peak MB':>8}",
    ]
    for name, cost in background["costs"].items():
        lines.append(
            f"{name:>28} {cost.cpu_seconds:>8.1f} {cost.read_mb:>8.1f} {cost.rss_mb:>8.0f} {cost.peak_rss_mb:>8.0f}"
        )
    return "\n".join(lines)
