"""The operator with Kueue at scale: many queued FineTuneJobs drained through a quota (prints figures; not a test).

On the local control plane (real API server, scheduler, controller-manager; KWOK GPU nodes) with the real Kueue
manager (hack/kueue/build.sh, tests/kube/kueue.py) and the real `kubetune operator --kueue`, apply N jobs (200
by default) of 4 workers x 2 GPUs into one LocalQueue whose ClusterQueue has quota for `--fits` (20) of them at a
time. Each job that reaches Running has its worker 0 completed by this script a moment later (KWOK), so the
queue drains wave after wave. Reported:

* admission → all 4 worker pods created (p50, p99, max): from this process's Workload watch delivering the
  Admitted=True condition to its pod watch delivering the job's 4th pod (both through watch delivery, so the
  same lag on each side; on 2 shared cores that lag dominates during bursts);
* the same path on the API server's clock, step by step (benchmarks/admission_segments.py, from its audit log):
  applied -> Workload created -> admitted (Kueue's write) -> the job's first reconcile ended (if after the
  admission) -> the operator's next reconcile began -> its reads answered -> 4th pod created, for the jobs admitted while the others were still being applied and for the
  rest; how far behind the API server this process's two watches were; the five slowest jobs, moment by moment;
* the operator's peak RSS (VmHWM) and CPU seconds over the whole run, reconciles per job;
* how many jobs ended Failed (must be 0: waiting in the queue never fails a job) and the total wall time.

    python -m benchmarks.operator_queued [--jobs 200] [--fits 20] [--dwell SECONDS]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from benchmarks.admission_segments import AUDIT_POLICY, SEGMENTS, JobTimes, read_job_times, summarize, waves
from benchmarks.operator_scale import (
    CRD,
    METRICS_PORT,
    Watcher,
    audit_args,
    percentile,
    proc_stats,
    reconcile_totals,
)
from tests.kube.binaries import find_binaries
from tests.kube.harness import COMPLETE_ANNOTATION_PREFIX, LocalCluster, wait_for
from tests.kube.kueue import KueueManager, find_kueue

WORKERS = 4
GPUS_PER_WORKER = 2
GPUS_PER_NODE = 8
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NAMESPACE = "queued"


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: "bench"}},
        "spec": {
            "model": {"name": "prajjwal1/bert-tiny"},
            "dataset": {"name": "glue", "config": "sst2"},
            "distribution": {"nodes": WORKERS, "processesPerNode": 1},
            # KWOK's workers run nothing and write no output: their emptyDirs are accepted knowingly.
            "output": {"ephemeral": True},
            "kubernetes": {"resources": {"cpu": "100m", "memory": "128Mi", "gpusPerNode": GPUS_PER_WORKER}},
            "runPolicy": {"schedulingTimeoutSeconds": 5},  # queued far longer than this: must not matter
        },
    }


class QueuedWatcher(Watcher):
    """Watcher (pods; jobs Running) plus when each job's Workload is first seen Admitted."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(api, namespace)
        self.admitted_at: dict[str, float] = {}

    def run(self) -> None:
        extra = threading.Thread(target=self._workloads, daemon=True)
        extra.start()
        super().run()

    def _workloads(self) -> None:
        path = f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{self.namespace}/workloads"
        for event in self._stream(path, b'"type":"Admitted"'):
            workload = event["object"]
            labels = workload["metadata"].get("labels") or {}
            conditions = (workload.get("status") or {}).get("conditions") or []
            admitted = any(c.get("type") == "Admitted" and c.get("status") == "True" for c in conditions)
            if admitted and labels.get("kubetune.io/job-name"):
                self.admitted_at.setdefault(labels["kubetune.io/job-name"], time.monotonic())


def queue_objects(fits: int, pool_nodes: int) -> list[tuple[str, dict[str, Any]]]:
    """(plural, body) of the ResourceFlavor, ClusterQueue and LocalQueue: quota for `fits` jobs."""
    group = "kueue.x-k8s.io/v1beta2"
    quota = fits * WORKERS * GPUS_PER_WORKER
    return [
        ("resourceflavors", {"apiVersion": group, "kind": "ResourceFlavor", "metadata": {"name": "bench"}}),
        (
            "clusterqueues",
            {
                "apiVersion": group,
                "kind": "ClusterQueue",
                "metadata": {"name": "bench"},
                "spec": {
                    "namespaceSelector": {},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                            "flavors": [
                                {
                                    "name": "bench",
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": "10000"},
                                        {"name": "memory", "nominalQuota": "100Ti"},
                                        {"name": "nvidia.com/gpu", "nominalQuota": str(quota)},
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
        ),
        (
            "localqueues",
            {
                "apiVersion": group,
                "kind": "LocalQueue",
                "metadata": {"name": "bench", "namespace": NAMESPACE},
                "spec": {"clusterQueue": "bench"},
            },
        ),
    ]


def drain(cluster: Any, count: int, dwell: float, deadline: float) -> dict[str, str]:
    """Completes worker 0 of every job `dwell` s after it is first seen Running, until all `count` jobs are
    final; returns each job's final phase. Raises TimeoutError after `deadline` seconds."""
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    core: Any = client.CoreV1Api(cluster.api_client())
    running_since: dict[str, float] = {}
    completed: set[str] = set()
    final: dict[str, str] = {}
    began = time.monotonic()
    annotations = {
        f"{COMPLETE_ANNOTATION_PREFIX}phase": "Succeeded",
        f"{COMPLETE_ANNOTATION_PREFIX}exit-code": "0",
        f"{COMPLETE_ANNOTATION_PREFIX}reason": "Completed",
        f"{COMPLETE_ANNOTATION_PREFIX}message": "",
    }
    while len(final) < count:
        if time.monotonic() - began > deadline:
            raise TimeoutError(f"{count - len(final)} jobs not final after {deadline:.0f}s")
        jobs = custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", NAMESPACE, "finetunejobs")[
            "items"
        ]
        now = time.monotonic()
        for body in jobs:
            name, phase = body["metadata"]["name"], (body.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                final[name] = phase
            elif phase == "Running":
                running_since.setdefault(name, now)
                if name not in completed and now - running_since[name] >= dwell:
                    core.patch_namespaced_pod(
                        f"{name}-worker-0", NAMESPACE, {"metadata": {"annotations": annotations}}
                    )
                    completed.add(name)
        time.sleep(0.5)
    return final


def print_segments(times: dict[str, JobTimes], watcher: QueuedWatcher, wall_offset: float) -> None:
    """Where the time from admission to pods goes, on the API server's clock (admission_segments), for the
    jobs admitted while the others were still being applied and for the rest; then the same two moments as
    this process's watches saw them (how late each watch delivered), and the slowest jobs step by step."""
    groups = waves(times)
    for group, label, count, p50, p99, most in summarize(times, groups):
        if label == SEGMENTS[0][0]:
            print(f"{group + ' (API server clock, s)':<46} {'jobs':>5} {'p50':>7} {'p99':>7} {'max':>7}")
        print(f"  {label:<44} {count:>5} {p50:>7.3f} {p99:>7.3f} {most:>7.3f}")
    lags: dict[str, list[float]] = {"Workload watch": [], "pod watch": []}
    for name, job_times in times.items():
        seen_admitted = watcher.admitted_at.get(name)
        if seen_admitted is not None and job_times.admitted is not None:
            lags["Workload watch"].append(seen_admitted + wall_offset - job_times.admitted)
        pods = watcher.pods_seen.get(name, {})
        if len(pods) >= WORKERS and job_times.pods_created is not None:
            lags["pod watch"].append(max(pods.values()) + wall_offset - job_times.pods_created)
    for label, values in lags.items():
        if values:
            print(
                f"this benchmark's {label} behind the API server: p50 {statistics.median(values):.3f} s, "
                f"p99 {percentile(values, 0.99):.3f} s, max {max(values):.3f} s"
            )
    slowest = sorted(
        (name for name, t in times.items() if t.segment("admitted", "pods_created") is not None),
        key=lambda name: -(times[name].segment("admitted", "pods_created") or 0.0),
    )[:5]
    start = min((t.applied for t in times.values() if t.applied is not None), default=0.0)
    for name in slowest:
        t = times[name]
        moments = [(label, getattr(t, field)) for label, field in MOMENTS]
        print(
            f"  {name}: "
            + ", ".join(f"{label} {at - start:.3f}" for label, at in moments if at is not None)
            + " (s after the first apply)"
        )


MOMENTS = (
    ("applied", "applied"),
    ("Workload", "workload_created"),
    ("admitted", "admitted"),
    ("first reconcile ended", "first_done"),
    ("reconcile", "picked_up"),
    ("reads", "reads_done"),
    ("pods", "pods_created"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs applied (default 200)")
    parser.add_argument("--fits", type=int, default=20, help="jobs the quota admits at a time (default 20)")
    parser.add_argument("--dwell", type=float, default=2.0, help="seconds a job runs before it is completed")
    args = parser.parse_args(argv)
    kueue_build = find_kueue()
    pool_nodes = args.fits * WORKERS * GPUS_PER_WORKER // GPUS_PER_NODE
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-queued-"))
    try:
        (workdir / "audit").mkdir()
        with LocalCluster(
            find_binaries(),
            gpu_nodes=pool_nodes,
            gpus_per_node=GPUS_PER_NODE,
            workdir=workdir,
            apiserver_args=audit_args(workdir / "audit", AUDIT_POLICY),
        ) as cluster:
            cluster.kubectl("apply", "--server-side", "-f", str(CRD))
            established = (
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/finetunejobs.kubetune.io",
            )
            # (kubectl wait errors out while a brand-new CRD has no conditions at all yet)
            wait_for(
                lambda: cluster.kubectl(*established, check=False).returncode == 0, 90, "the CRD Established"
            )
            kueue = KueueManager(kueue_build, cluster)
            kueue.start()
            core: Any = client.CoreV1Api(cluster.api_client())
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            wait_for(lambda: core.read_namespaced_service_account("default", NAMESPACE), 30, "default SA")
            custom: Any = client.CustomObjectsApi(cluster.api_client())
            for plural, body in queue_objects(args.fits, pool_nodes):
                if plural == "localqueues":
                    custom.create_namespaced_custom_object(
                        "kueue.x-k8s.io", "v1beta2", NAMESPACE, plural, body
                    )
                else:
                    custom.create_cluster_custom_object("kueue.x-k8s.io", "v1beta2", plural, body)
            log = Path(tempfile.mkdtemp(prefix="kubetune-bench-")) / "operator.log"
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
            argv_operator = [
                sys.executable, "-m", "kubetune.cli", "operator", "--standalone", "--kueue",
                "--metrics-port", str(METRICS_PORT), "--health-port", "0", "--log-format", "plain",
            ]  # fmt: skip
            with log.open("wb") as sink:
                operator = subprocess.Popen(argv_operator, env=env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                wait_for(reconcile_totals, 60, "the operator's /metrics")
                # Warm-up: one job through the whole path, so that the operator's watches are established.
                custom.create_namespaced_custom_object(
                    "kubetune.io", "v1alpha1", NAMESPACE, "finetunejobs", job("warm-up")
                )
                drain(cluster, 1, args.dwell, deadline=120)
                watcher = QueuedWatcher(cluster.api_client(), NAMESPACE)
                watcher.start()
                watcher.ready.wait()
                time.sleep(1.0)
                _, cpu_before = proc_stats(operator.pid)
                wall_offset = time.time() - time.monotonic()  # the watcher's clock to the API server's
                began = time.monotonic()
                for index in range(args.jobs):
                    custom.create_namespaced_custom_object(
                        "kubetune.io", "v1alpha1", NAMESPACE, "finetunejobs", job(f"job-{index:03d}")
                    )
                apply_seconds = time.monotonic() - began
                final = drain(cluster, args.jobs + 1, args.dwell, deadline=60 + 10 * args.jobs)
                final.pop("warm-up", None)
                wall = time.monotonic() - began
                rss_peak, cpu_after = proc_stats(operator.pid)
                reconciles, _ = reconcile_totals()
                watcher.stop.set()
                by_job = {
                    name: max(watcher.pods_seen[name].values()) - admitted
                    for name, admitted in watcher.admitted_at.items()
                    if len(watcher.pods_seen.get(name, {})) >= WORKERS
                }
                latencies = list(by_job.values())
                slowest = max(by_job, key=lambda name: by_job[name])
                failed = sorted(name for name, phase in final.items() if phase != "Succeeded")
                print(
                    f"Kueue {kueue_build.root.name}; {pool_nodes} KWOK nodes x {GPUS_PER_NODE} GPUs; {args.jobs} jobs "
                    f"of {WORKERS} x {GPUS_PER_WORKER} GPUs, quota for {args.fits} at a time, each runs {args.dwell:g} s"
                )
                print(
                    f"applied in {apply_seconds:.1f} s; all final after {wall:.1f} s; failed: {len(failed)} {failed[:5]}"
                )
                print(
                    f"admission -> 4 pods created (watch): p50 {statistics.median(latencies):.3f} s, "
                    f"p99 {percentile(latencies, 0.99):.3f} s, max {max(latencies):.3f} s ({slowest}) over {len(latencies)} jobs"
                )
                time.sleep(2.0)  # the audit log is written in batches of at most 1 s
                audit_log = shutil.copy(workdir / "audit" / "audit.log", log.parent / "audit.log")
                times = read_job_times(Path(audit_log), NAMESPACE, WORKERS)
                times.pop("warm-up", None)
                print_segments(times, watcher, wall_offset)
                print(
                    f"operator: peak RSS {rss_peak:.0f} MB, CPU {cpu_after - cpu_before:.1f} s, "
                    f"{reconciles / args.jobs:.1f} reconciles per job; Kueue started in {kueue.startup_seconds:.1f} s"
                )
            finally:
                operator.terminate()
                operator.wait(30)
                kueue.stop()
                print(f"operator log: {log}; the API server's audit log is kept beside it")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
