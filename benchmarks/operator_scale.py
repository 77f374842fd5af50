"""How fast the operator turns FineTuneJobs into worker pods, at scale (prints figures; not a test).

On the local control plane (real API server, scheduler, controller-manager; KWOK GPU nodes), apply N
FineTuneJobs of 4 nodes each (N = 10, 100, 200 by default) as fast as one client can, and report:

* apply → all 4 worker pods created (`pods` p50, p99, max): on the API server's clock, from its answer to
  the job's create to its answer to the create of the job's 4th pod (from its audit log, microseconds);
* the same as a watching client sees it (`seen` p50, p99): from the job's create call returning here to
  this process's pod watch delivering the 4th pod. On 2 shared cores the API server delivers pod watch
  events about a second late during a burst, to every watcher alike (the operator's own watch included),
  so this column mostly measures watch delivery, not the operator;
* apply → Running (p50, p99): to the watch seeing status.phase Running (includes KWOK "starting" the pods);
* the operator's peak RSS (VmHWM) and CPU seconds (user+system) during each round, reconciles per job and
  their mean duration, and the CPU seconds each control-plane process used in the round.

Targets from the issue: p50 ≤ 0.3 s and p99 ≤ 1 s at N = 200; RSS ≤ 150 MB.

    python -m benchmarks.operator_scale [--jobs 10 100 200] [--rate JOBS_PER_S] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client

from tests.kube.harness import LocalCluster, wait_for
from tests.kube.processes import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "manifests" / "crd" / "finetunejobs.kubetune.io.yaml"
RESOURCE_VERSION = re.compile(rb'"resourceVersion":"(\d+)"')
NODES_PER_JOB = 4
# A port free when the benchmark starts, not a fixed one: two benchmarks on one machine (helpers, a CI run) would
# otherwise have one operator fail to bind it and the other benchmark read the wrong operator's /metrics.
METRICS_PORT = free_loopback_port()
GPU_NODES = 32
GPUS_PER_NODE = 32
# What the operator image sets for the operator's process (Dockerfile, stage `operator`), so the benchmark's
# operator allocates memory as the deployed one does.
OPERATOR_IMAGE_ENV = {"MALLOC_ARENA_MAX": "2"}


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "prajjwal1/bert-tiny"},
            "dataset": {"name": "glue", "config": "sst2"},
            "distribution": {"nodes": NODES_PER_JOB, "processesPerNode": 1},
            # KWOK's workers run nothing and write no output: their emptyDirs are accepted knowingly.
            "output": {"ephemeral": True},
            "kubernetes": {"resources": {"cpu": "100m", "memory": "128Mi"}},
        },
    }


# The API server's audit log times every create on the server (microseconds): "pods created" is then when
# the API server answered the 4th pod's create, measured against when it answered the job's create, with no
# client or watch delay in between. Only those two requests are logged, at the cheapest level.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    verbs: [create]
    resources:
      - group: ""
        resources: [pods]
      - group: kubetune.io
        resources: [finetunejobs]
  - level: None
"""


def audit_args(folder: Path, policy: str = AUDIT_POLICY) -> list[str]:
    """kube-apiserver flags that write the audit log of `policy` to folder/audit.log."""
    (folder / "audit-policy.yaml").write_text(policy)
    return [
        f"--audit-policy-file={folder / 'audit-policy.yaml'}",
        f"--audit-log-path={folder / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-mode=batch",  # written off the request path
        "--audit-log-batch-max-wait=1s",
        "--audit-log-maxsize=0",  # one file, never rotated: rounds are read from it whole or from an offset
    ]


def install_crd(cluster: Any) -> None:
    """Apply the FineTuneJob CRD, wait until it is Established and the KWOK nodes are Ready."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    established = ("wait", "--for=condition=Established", "--timeout=30s", "crd/finetunejobs.kubetune.io")
    # (right after the apply the CRD may have no conditions yet, and kubectl wait then fails at once)
    wait_for(lambda: cluster.kubectl(*established, check=False).returncode == 0, 60, "the CRD Established")
    cluster.wait_for_nodes_ready(120)


def server_created_seconds(audit_log: Path, namespace: str) -> dict[str, float]:
    """Per job of `namespace`: seconds from the API server answering its create to answering the create of
    its last worker pod (from the audit log; a job whose pods are not all logged is left out)."""
    job_created: dict[str, float] = {}
    pods_created: dict[str, list[float]] = {}
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        code = (event.get("responseStatus") or {}).get("code")
        if ref.get("namespace") != namespace or code != 201:
            continue
        when = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        if ref.get("resource") == "finetunejobs":
            job_created[ref["name"]] = when
        elif ref.get("resource") == "pods" and "-worker-" in ref.get("name", ""):
            pods_created.setdefault(ref["name"].rsplit("-worker-", 1)[0], []).append(when)
    return {
        name: max(pods_created[name]) - when
        for name, when in job_created.items()
        if len(pods_created.get(name, ())) >= NODES_PER_JOB
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def proc_stats(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return peak_kb / 1024, cpu


def component_cpu(cluster: Any) -> dict[str, float]:
    """CPU seconds so far of each control-plane process and of this benchmark process."""
    usage = {process.name: proc_stats(process.pid)[1] for process in cluster.processes if process.pid}
    usage["benchmark"] = proc_stats(os.getpid())[1]
    return usage


class Watcher(threading.Thread):
    """Records when each job's pods appear and when the job first reports Running."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace = api, namespace
        self.pods_seen: dict[str, dict[str, float]] = {}
        self.running_at: dict[str, float] = {}
        self.stop = threading.Event()
        self.reconnects = 0
        self.ready = threading.Event()

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._pods, daemon=True),
            threading.Thread(target=self._jobs, daemon=True),
        ]
        for thread in threads:
            thread.start()
        self.ready.set()
        self.stop.wait()

    def _stream(self, path: str, wanted: bytes) -> Any:
        """The watch events whose raw line contains `wanted`, as dicts. Only those lines are decoded: the
        measuring process must keep up with thousands of events a second on the same 2 cores, or the API
        server's watch buffer fills and the figures measure this process's backlog instead of the operator.
        A watch the server closes anyway is resumed from the last resourceVersion seen (`reconnects` counts
        it; resumed events arrive late, which can only make the figures worse)."""
        resource_version = ""
        while not self.stop.is_set():
            query = [("watch", "true"), ("timeoutSeconds", "600"), ("allowWatchBookmarks", "true")]
            if resource_version:
                query.append(("resourceVersion", resource_version))
            method, url, headers, body, post = self.api.param_serialize(
                method="GET",
                resource_path=path,
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            buffer = b""
            try:
                response = self.api.call_api(method, url, headers, body, post, _request_timeout=700)
                for chunk in response.response.stream(65536):
                    lines = (buffer + chunk).split(b"\n")
                    buffer = lines.pop()
                    for line in lines:
                        # The object's own resourceVersion is the first in its metadata.
                        found = RESOURCE_VERSION.search(line)
                        if found:
                            resource_version = found.group(1).decode()
                        if wanted in line:
                            yield json.loads(line)
                    if self.stop.is_set():
                        return
            except (urllib3.exceptions.HTTPError, OSError):
                pass
            self.reconnects += 1

    def _pods(self) -> None:
        for event in self._stream(f"/api/v1/namespaces/{self.namespace}/pods", b'{"type":"ADDED"'):
            labels = event["object"]["metadata"].get("labels") or {}
            job_name = labels.get("kubetune.io/job-name")
            if job_name:
                pod_name = event["object"]["metadata"]["name"]
                self.pods_seen.setdefault(job_name, {}).setdefault(pod_name, time.monotonic())

    def _jobs(self) -> None:
        path = f"/apis/kubetune.io/v1alpha1/namespaces/{self.namespace}/finetunejobs"
        for event in self._stream(path, b'"phase":"Running"'):
            body = event["object"]
            if (body.get("status") or {}).get("phase") == "Running":
                self.running_at.setdefault(body["metadata"]["name"], time.monotonic())


def reconcile_totals() -> tuple[float, float]:
    """(reconciles done, seconds spent in them) so far, from the operator's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("kubetune_reconcile_duration_seconds_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values.get("kubetune_reconcile_duration_seconds_count", 0.0), values.get(
        "kubetune_reconcile_duration_seconds_sum", 0.0
    )


def run_round(
    cluster: Any,
    operator_pid: int,
    count: int,
    namespace: str = "",
    rate: float = 0.0,
    snapshot: bool = False,
) -> dict[str, float]:
    """Apply `count` jobs in a fresh namespace, wait until all run, clean up; returns the figures. `snapshot`:
    signal the operator (under benchmarks/memory_probe.py) to write a tracemalloc snapshot once all run."""
    api = cluster.api_client()
    namespace = namespace or f"bench-{count}"
    core: Any = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), 30, "default SA")
    watcher = Watcher(api, namespace)
    watcher.start()
    watcher.ready.wait()
    time.sleep(1.0)  # let both watches open
    rss_before, cpu_before = proc_stats(operator_pid)
    others_before = component_cpu(cluster)
    reconciles_before, seconds_before = reconcile_totals()
    custom = client.CustomObjectsApi(api)
    applied: dict[str, float] = {}
    began = time.monotonic()
    for index in range(count):
        if rate > 0:  # paced: job i is applied at began + i / rate
            time.sleep(max(0.0, began + index / rate - time.monotonic()))
        name = f"job-{index:03d}"
        custom.create_namespaced_custom_object(
            "kubetune.io", "v1alpha1", namespace, "finetunejobs", job(name)
        )
        applied[name] = time.monotonic()
    apply_seconds = time.monotonic() - began

    def all_running() -> bool:
        return len(watcher.running_at) == count and all(
            len(watcher.pods_seen.get(n, {})) == NODES_PER_JOB for n in applied
        )

    try:
        wait_for(all_running, 120 + count, f"{count} jobs Running", interval=0.5)
    except Exception:
        not_running = sorted(set(applied) - set(watcher.running_at))
        short = {
            n: len(watcher.pods_seen.get(n, {}))
            for n in applied
            if len(watcher.pods_seen.get(n, {})) != NODES_PER_JOB
        }
        print(
            f"not seen Running: {not_running[:10]}; jobs with pods missing: {dict(list(short.items())[:10])}"
        )
        raise
    rss_peak, cpu_after = proc_stats(operator_pid)
    if snapshot:
        os.kill(operator_pid, signal.SIGUSR2)
        time.sleep(5.0)  # (the snapshot is written on the operator's main thread, between its events)
    others_after = component_cpu(cluster)
    reconciles, reconcile_seconds = reconcile_totals()
    watcher.stop.set()
    seen = [max(watcher.pods_seen[n].values()) - applied[n] for n in applied]
    audit_log = Path(cluster.workdir) / "audit" / "audit.log"

    def all_logged() -> dict[str, float] | None:  # (the log is written in batches, within a second)
        found = server_created_seconds(audit_log, namespace)
        return found if len(found) == count else None

    created = list(wait_for(all_logged, 30, "the audit log of every job's pods", interval=0.5).values())
    running = [watcher.running_at[n] - applied[n] for n in applied]
    figures = {
        "jobs": count,
        "apply_seconds": apply_seconds,
        "pods_p50": statistics.median(created),
        "pods_p99": percentile(created, 0.99),
        "pods_max": max(created),
        "seen_p50": statistics.median(seen),
        "seen_p99": percentile(seen, 0.99),
        "running_p50": statistics.median(running),
        "running_p99": percentile(running, 0.99),
        "rss_mb": rss_peak,
        "cpu_seconds": cpu_after - cpu_before,
        "rss_before_mb": rss_before,
        "wall_seconds": time.monotonic() - began,
        "watch_reconnects": watcher.reconnects,
        **{f"component_cpu_{name}": others_after[name] - others_before[name] for name in others_after},
        "reconciles_per_job": (reconciles - reconciles_before) / count,
        "reconcile_ms": 1000
        * (reconcile_seconds - seconds_before)
        / max(1.0, reconciles - reconciles_before),
    }
    try:
        custom.delete_collection_namespaced_custom_object(
            "kubetune.io", "v1alpha1", namespace, "finetunejobs"
        )
    except client.ApiException as error:  # 1,000 jobs: a busy API server can time the call out (504)
        if error.status != 504:
            raise
        print(f"deleting the round's jobs timed out ({error.status}); the namespace's deletion removes them")
    core.delete_namespace(namespace)
    wait_for(
        lambda: not core.list_pod_for_all_namespaces(label_selector="kubetune.io/job-name").items,
        180,
        "the round's pods to be garbage-collected",
        interval=1.0,
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100, 200], help="rounds (jobs per round)")
    parser.add_argument("--threads", type=int, default=16, help="the operator's --threads")
    parser.add_argument("--operator-arg", action="append", default=[], help="one more operator flag")
    parser.add_argument("--profile", metavar="FILE", help="run the operator under cProfile, stats to FILE")
    parser.add_argument(
        "--tracemalloc",
        metavar="PREFIX",
        help="run the operator under tracemalloc (benchmarks/memory_probe.py) and write a snapshot PREFIX.N at "
        "the end of each round, every job Running (its RSS then includes tracemalloc's own)",
    )
    parser.add_argument("--tracemalloc-frames", type=int, default=8, help="traceback frames per allocation")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="apply at most this many jobs per second (default: as fast as possible)",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-cluster-"))
    try:
        (workdir / "audit").mkdir()
        # Enough GPUs for the largest round (32 per node, 1 per worker), at least GPU_NODES nodes.
        gpu_nodes = max(GPU_NODES, -(-max(args.jobs) * NODES_PER_JOB // GPUS_PER_NODE))
        with LocalCluster(
            gpu_nodes=gpu_nodes,
            gpus_per_node=GPUS_PER_NODE,
            workdir=workdir,
            apiserver_args=audit_args(workdir / "audit"),
        ) as cluster:
            install_crd(cluster)
            log = Path(tempfile.mkdtemp(prefix="kubetune-bench-")) / "operator.log"
            env = {**os.environ, **OPERATOR_IMAGE_ENV, "KUBECONFIG": str(cluster.kubeconfig)}
            profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
            entry = ["kubetune.cli"]
            if args.tracemalloc:
                entry = ["benchmarks.memory_probe", args.tracemalloc, str(args.tracemalloc_frames)]
            argv_operator = [
                sys.executable,
                *profile,
                "-m",
                *entry,
                "operator",
                "--standalone",
                "--metrics-port",
                str(METRICS_PORT),
                "--health-port",
                "0",
                "--threads",
                str(args.threads),
                "--log-format",
                "plain",
                *args.operator_arg,
            ]
            with log.open("wb") as sink:
                operator = subprocess.Popen(argv_operator, env=env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                wait_for(reconcile_totals, 60, "the operator's /metrics")
                # Warm-up: the operator's watches are established and its first reconcile is done.
                run_round(cluster, operator.pid, 1, namespace="bench-warmup")
                pace = f"{args.rate:g} jobs/s" if args.rate else "as fast as one client can"
                print(
                    f"cluster: {gpu_nodes} KWOK nodes x {GPUS_PER_NODE} GPUs; jobs of {NODES_PER_JOB} workers; applied {pace}"
                )
                header = (
                    f"{'jobs':>5} {'apply s':>8} {'pods p50':>9} {'pods p99':>9} {'pods max':>9} "
                    f"{'seen p50':>9} {'seen p99':>9} {'run p50':>8} {'run p99':>8} {'RSS MB':>7} {'CPU s':>6} {'rec/job':>7} {'rec ms':>6}"
                )
                print(header, flush=True)
                for count in args.jobs:
                    f = run_round(
                        cluster, operator.pid, count, rate=args.rate, snapshot=bool(args.tracemalloc)
                    )
                    print(
                        f"{f['jobs']:>5.0f} {f['apply_seconds']:>8.2f} {f['pods_p50']:>9.3f} {f['pods_p99']:>9.3f} "
                        f"{f['pods_max']:>9.3f} {f['seen_p50']:>9.3f} {f['seen_p99']:>9.3f} {f['running_p50']:>8.3f} {f['running_p99']:>8.3f} "
                        f"{f['rss_mb']:>7.1f} {f['cpu_seconds']:>6.1f} {f['reconciles_per_job']:>7.1f} "
                        f"{f['reconcile_ms']:>6.0f}",
                        flush=True,
                    )
                    others = {
                        k.removeprefix("component_cpu_"): v
                        for k, v in f.items()
                        if k.startswith("component_cpu_")
                    }
                    print(
                        f"      RSS before the round {f['rss_before_mb']:.1f} MB; CPU s over {f['wall_seconds']:.1f} s: "
                        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in others.items())
                        + (
                            f"; benchmark watch resumed {f['watch_reconnects']}x"
                            if f["watch_reconnects"]
                            else ""
                        ),
                        flush=True,
                    )
            finally:
                operator.terminate()
                operator.wait(30)
                print(f"operator log: {log}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
