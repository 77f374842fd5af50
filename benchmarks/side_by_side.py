"""kubetune side by side with Kubeflow Trainer v2 (TrainJob → JobSet → Job → pods), same cluster, same run.

One local control plane (real API server, scheduler, kube-controller-manager; 32 KWOK GPU nodes x 32 GPUs)
runs both systems at once: the kubetune operator, and Trainer's and JobSet's controller managers
(tests/kube/peer.py, built by hack/peer/build.sh). Each round applies N jobs of 4 nodes (1 process and 1 GPU
per node) to one system, waits until every pod runs, cleans up, then does the same for the other system; the
order alternates from round to round. Per system and round it reports:

* `pods` p50/p99/max: apply → all 4 worker pods created, on the API server's clock (audit log: its answer to
  the job's create to its answer to the create of the job's 4th pod);
* `run` p50/p99/max: apply → all 4 pods Running, on the same clock (KWOK's first status patch of the job's
  4th pod after the scheduler bound it: KWOK's pod-ready stage, phase Running);
* `seen p50`: apply (the create call returning here) → this process's pod watch seeing all 4 pods Running.
  On the loaded 2 shared cores the watch falls behind by seconds to a minute in a 200-job burst (this
  process also makes the creates), so this column measures the benchmark as much as the systems;
* `CPU s` and `RSS MB`: the system's controller processes (kubetune: the operator; peer: Trainer's manager +
  JobSet's manager), CPU seconds (user+system) used in the round and the peak RSS (VmHWM, summed over the
  peer's two processes);
* `KCM s`: kube-controller-manager's CPU seconds in the round. The peer's pods are created by the Job
  controller inside it, whose share cannot be measured on its own: this column is an upper bound for that
  share (it also holds the garbage collector, the endpoint controllers, ... which work in both systems'
  rounds);
* `req/job`: API server requests per job made by the system's controllers, from the audit log by user
  (each controller runs as a ServiceAccount of its own; the peer's count includes the Job controller's
  requests, `system:serviceaccount:kube-system:job-controller`), and `all/job`: every request the API server
  logged in the round (scheduler, KWOK, this benchmark's client and watch included) per job.

Then the ratio kubetune/peer of each figure (below 1: kubetune used less or was faster).

With `--background 5000 500` the rounds run beside 5,000 unrelated pods and 500 unrelated Jobs
(benchmarks/background.py), and what each controller paid while those were made is printed first.

    python -m benchmarks.side_by_side [--jobs 10 200] [--rate JOBS_PER_S] [--runs 1] [--gpu-nodes 32]
                                      [--background PODS JOBS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from benchmarks import background as cluster_background
from benchmarks.operator_scale import (
    Watcher,
    audit_args,
    component_cpu,
    install_crd,
    percentile,
    proc_stats,
)
from benchmarks.operator_scale import job as kubetune_job
from tests.kube.harness import ClusterError, LocalCluster, wait_for
from tests.kube.peer import POD_JOB_LABEL, TRAINER_API, PeerManagers, find_peer, train_job
from tests.kube.processes import free_loopback_port, http_get_ok

NODES_PER_JOB = 4
GPU_NODES = 32
GPUS_PER_NODE = 32
OPERATOR_ACCOUNT = "kubetune-operator"
SERVICE_ACCOUNT_USER = "system:serviceaccount:kube-system:"
JOB_CONTROLLER_USER = SERVICE_ACCOUNT_USER + "job-controller"

# Pod creates are logged with their request body (the labels say whose job a pod is: the Job controller
# creates pods by generateName), everything else at the cheapest level, so that every request is counted.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Request
    verbs: [create]
    resources:
      - group: ""
        resources: [pods]
  - level: Metadata
"""


@dataclass
class System:
    """One of the two systems: how its jobs are made and told apart, and which processes and users are its."""

    name: str
    group: str
    version: str
    plural: str
    pod_label: str  # the pod label whose value is the job's name
    users: tuple[str, ...]  # the API server users of its controllers
    pids: dict[str, int] = field(default_factory=dict)

    def job_of_pod(self, pod: str) -> str:
        """The job a pod belongs to, from the pod's name (kubetune: <job>-worker-<i>; the peer's Job
        controller: <job>-node-0-<i>-<random>)."""
        return pod.rsplit("-worker-" if self.name == "kubetune" else "-node-", 1)[0]

    def document(self, name: str) -> dict[str, Any]:
        if self.name == "kubetune":
            return kubetune_job(name)
        return train_job(name, NODES_PER_JOB)


def kubetune_system(pid: int) -> System:
    return System(
        "kubetune",
        "kubetune.io",
        "v1alpha1",
        "finetunejobs",
        "kubetune.io/job-name",
        (SERVICE_ACCOUNT_USER + OPERATOR_ACCOUNT,),
        {"operator": pid},
    )


def peer_system(peer: PeerManagers) -> System:
    return System(
        "peer",
        *TRAINER_API,
        "trainjobs",
        POD_JOB_LABEL,
        (*(SERVICE_ACCOUNT_USER + name for name in peer.pids()), JOB_CONTROLLER_USER),
        peer.pids(),
    )


def _when(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()


def read_audit(audit_log: Path, offset: int) -> list[dict[str, Any]]:
    """The audit events written from byte `offset` on (whole lines only)."""
    with audit_log.open("rb") as log:
        log.seek(offset)
        data = log.read()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line]


def pods_created_seconds(events: list[dict[str, Any]], system: System, namespace: str) -> dict[str, float]:
    """Per job of `namespace`: seconds from the API server answering its create to answering the create of its
    last (NODES_PER_JOB-th) pod; a job whose pods are not all logged is left out."""
    job_created: dict[str, float] = {}
    pods_created: dict[str, list[float]] = {}
    for event in events:
        ref = event.get("objectRef") or {}
        if event.get("verb") != "create" or ref.get("namespace") != namespace:
            continue
        if (event.get("responseStatus") or {}).get("code") != 201:
            continue
        if ref.get("resource") == system.plural and not ref.get("subresource"):
            job_created[ref["name"]] = _when(event)
        elif ref.get("resource") == "pods" and not ref.get("subresource"):
            labels = ((event.get("requestObject") or {}).get("metadata") or {}).get("labels") or {}
            owner = labels.get(system.pod_label)
            if owner:
                pods_created.setdefault(owner, []).append(_when(event))
    return {
        name: sorted(pods_created[name])[NODES_PER_JOB - 1] - when
        for name, when in job_created.items()
        if len(pods_created.get(name, ())) >= NODES_PER_JOB
    }


@dataclass
class Milestones:
    """Per job, from the audit log (API server clock): apply → its last pod bound by the scheduler, and apply →
    its last pod Running (KWOK's first status patch after the binding: the pod-ready stage, phase Running);
    per pod, binding → Running."""

    to_bound: dict[str, float]
    to_running: dict[str, float]
    bound_to_running: list[float]


def milestones(events: list[dict[str, Any]], system: System, namespace: str) -> Milestones:
    """The Milestones of `system`'s jobs in `namespace` (jobs short of NODES_PER_JOB pods are left out)."""
    job_created: dict[str, float] = {}
    bound: dict[str, float] = {}
    status_patches: dict[str, list[float]] = {}
    for event in events:
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or (event.get("responseStatus") or {}).get("code", 0) >= 300:
            continue
        verb, resource, sub = event.get("verb"), ref.get("resource"), ref.get("subresource")
        if verb == "create" and resource == system.plural and not sub:
            job_created[ref["name"]] = _when(event)
        elif resource == "pods" and verb == "create" and sub == "binding":
            bound[ref["name"]] = min(bound.get(ref["name"], float("inf")), _when(event))
        elif resource == "pods" and verb == "patch" and sub == "status":
            status_patches.setdefault(ref["name"], []).append(_when(event))
    # (the log is written in batches, not strictly in time order: pair by time, not by position)
    running: dict[str, float] = {}
    for pod, when in bound.items():
        after = [patched for patched in status_patches.get(pod, ()) if patched >= when]
        if after:
            running[pod] = min(after)
    per_job: dict[str, list[str]] = {}
    for pod in bound:
        per_job.setdefault(system.job_of_pod(pod), []).append(pod)
    to_bound, to_running = {}, {}
    for job, when in job_created.items():
        pods = per_job.get(job, [])
        if len(pods) >= NODES_PER_JOB:
            to_bound[job] = max(bound[pod] for pod in pods) - when
            if all(pod in running for pod in pods):
                to_running[job] = max(running[pod] for pod in pods) - when
    return Milestones(to_bound, to_running, [running[pod] - bound[pod] for pod in running])


def peer_stage_seconds(events: list[dict[str, Any]], namespace: str) -> dict[str, float]:
    """The peer's chain, from the audit log: p50 over jobs of the TrainJob's create to the first write of
    its JobSet (Trainer applies it server-side: a patch), of its Job (JobSet) and of its last pod (the Job
    controller)."""
    first: dict[str, dict[str, float]] = {}
    for event in events:
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or ref.get("subresource"):
            continue
        if (event.get("responseStatus") or {}).get("code") not in (200, 201):
            continue
        resource, verb = ref.get("resource"), event.get("verb")
        if resource == "trainjobs" and verb == "create":
            first.setdefault("trainjobs", {})[ref["name"]] = _when(event)
        elif resource == "jobsets" and verb in ("create", "patch"):
            first.setdefault("jobsets", {}).setdefault(ref["name"], _when(event))
        elif resource == "jobs" and verb == "create":
            first.setdefault("jobs", {}).setdefault(ref["name"].rsplit("-node-", 1)[0], _when(event))
    stages = {}
    for resource in ("jobsets", "jobs"):
        spans = [
            when - first["trainjobs"][job]
            for job, when in first.get(resource, {}).items()
            if job in first.get("trainjobs", {})
        ]
        stages[resource] = statistics.median(spans) if spans else float("nan")
    return stages


def requests_by_user(events: list[dict[str, Any]], began: float, ended: float) -> Counter[str]:
    """How many requests each user made between `began` and `ended` (epoch seconds, the API server's clock)."""
    counts: Counter[str] = Counter()
    for event in events:
        if began <= _when(event) <= ended:
            counts[(event.get("user") or {}).get("username", "?")] += 1
    return counts


class PodWatcher(Watcher):
    """Records when each job's pods appear and when each runs (the job is told by `label`)."""

    def __init__(self, api: client.ApiClient, namespace: str, label: str) -> None:
        super().__init__(api, namespace)
        self.label = label
        self.pods_running: dict[str, dict[str, float]] = {}

    def run(self) -> None:
        thread = threading.Thread(target=self._watch_pods, daemon=True)
        thread.start()
        self.ready.set()
        self.stop.wait()

    def _watch_pods(self) -> None:
        for event in self._stream(f"/api/v1/namespaces/{self.namespace}/pods", b'"kind":"Pod"'):
            pod = event["object"]
            owner = (pod["metadata"].get("labels") or {}).get(self.label)
            if not owner:
                continue
            name, now = pod["metadata"]["name"], time.monotonic()
            self.pods_seen.setdefault(owner, {}).setdefault(name, now)
            if (pod.get("status") or {}).get("phase") == "Running":
                self.pods_running.setdefault(owner, {}).setdefault(name, now)


def kcm_pid(cluster: LocalCluster) -> int:
    return next(p.pid for p in cluster.processes if p.name == "kube-controller-manager" and p.pid)


def run_round(
    cluster: LocalCluster, system: System, count: int, namespace: str, rate: float
) -> dict[str, Any]:
    """Apply `count` jobs of `system` in a fresh namespace, wait until all their pods run, clean up; returns
    the figures."""
    api = cluster.api_client()
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), 30, "default SA")
    watcher = PodWatcher(api, namespace, system.pod_label)
    watcher.start()
    watcher.ready.wait()
    time.sleep(1.0)  # let the watch open
    audit_log = Path(cluster.workdir) / "audit" / "audit.log"
    time.sleep(1.5)  # the audit batch of what came before is written
    offset = audit_log.stat().st_size
    before = {name: proc_stats(pid) for name, pid in system.pids.items()}
    kcm = kcm_pid(cluster)
    kcm_before = proc_stats(kcm)[1]
    components_before = component_cpu(cluster)
    wall_began, began = time.time(), time.monotonic()
    applied: dict[str, float] = {}
    for index in range(count):
        if rate > 0:  # paced: job i is applied at began + i / rate
            time.sleep(max(0.0, began + index / rate - time.monotonic()))
        name = f"job-{index:04d}"
        custom.create_namespaced_custom_object(
            system.group, system.version, namespace, system.plural, system.document(name)
        )
        applied[name] = time.monotonic()
    apply_seconds = time.monotonic() - began

    def all_running() -> bool:
        return all(len(watcher.pods_running.get(n, {})) == NODES_PER_JOB for n in applied)

    try:
        wait_for(all_running, 120 + count, f"{count} {system.name} jobs' pods Running", interval=0.2)
    except Exception:
        short = {n: len(watcher.pods_running.get(n, {})) for n in applied if not all_running()}
        print(f"{system.name}: jobs with pods not Running: {dict(list(short.items())[:10])}", flush=True)
        raise
    wall_ended = time.time()
    after = {name: proc_stats(pid) for name, pid in system.pids.items()}
    kcm_after = proc_stats(kcm)[1]
    components = {
        name: cpu - components_before.get(name, 0.0) for name, cpu in component_cpu(cluster).items()
    }
    watcher.stop.set()

    def all_logged() -> (
        tuple[list[dict[str, Any]], dict[str, float], Milestones] | None
    ):  # written in batches
        events = read_audit(audit_log, offset)
        created = pods_created_seconds(events, system, namespace)
        steps = milestones(events, system, namespace)
        return (events, created, steps) if len(created) == len(steps.to_running) == count else None

    try:
        events, created, steps = wait_for(all_logged, 60, "the audit log of every job's pods", interval=1.0)
    except ClusterError:  # report what was logged rather than nothing, and say so
        events = read_audit(audit_log, offset)
        created = pods_created_seconds(events, system, namespace)
        steps = milestones(events, system, namespace)
        print(
            f"{system.name}: the audit log has the pods of {len(created)} and the Running pods of "
            f"{len(steps.to_running)} of {count} jobs; the figures are over those",
            flush=True,
        )
    users = requests_by_user(events, wall_began, wall_ended)
    own = sum(users[user] for user in system.users)
    stages = peer_stage_seconds(events, namespace) if system.name == "peer" else {}
    running = list(steps.to_running.values())
    seen = [max(watcher.pods_running[n].values()) - applied[n] for n in applied]
    figures = {
        "system": system.name,
        "jobs": count,
        "apply_seconds": apply_seconds,
        "pods_p50": statistics.median(created.values()),
        "pods_p99": percentile(list(created.values()), 0.99),
        "pods_max": max(created.values()),
        "run_p50": statistics.median(running),
        "run_p99": percentile(running, 0.99),
        "run_max": max(running),
        "cpu_seconds": sum(after[name][1] - before[name][1] for name in after),
        "rss_mb": sum(after[name][0] for name in after),
        "kcm_cpu_seconds": kcm_after - kcm_before,
        "requests_per_job": own / count,
        "all_requests_per_job": sum(users.values()) / count,
        "requests_by_user": {user: users[user] for user in system.users},
        "cpu_by_process": {name: after[name][1] - before[name][1] for name in after},
        "watch_reconnects": watcher.reconnects,
        "seen_p50": statistics.median(seen),
        "seen_p99": percentile(seen, 0.99),
        "bound_p50": statistics.median(steps.to_bound.values()),
        "bound_to_running_p50": statistics.median(steps.bound_to_running),
        "stages_p50": stages,
        "cpu_by_component": components,
    }
    custom.delete_collection_namespaced_custom_object(system.group, system.version, namespace, system.plural)
    core.delete_namespace(namespace)
    wait_for(
        lambda: not core.list_namespaced_pod(namespace).items,
        300,
        f"the {system.name} round's pods to be deleted",
        interval=1.0,
    )
    return figures


COLUMNS = (
    ("pods p50", "pods_p50", "{:.3f}"),
    ("pods p99", "pods_p99", "{:.3f}"),
    ("pods max", "pods_max", "{:.3f}"),
    ("run p50", "run_p50", "{:.3f}"),
    ("run p99", "run_p99", "{:.3f}"),
    ("run max", "run_max", "{:.3f}"),
    ("seen p50", "seen_p50", "{:.3f}"),
    ("CPU s", "cpu_seconds", "{:.1f}"),
    ("RSS MB", "rss_mb", "{:.0f}"),
    ("KCM s", "kcm_cpu_seconds", "{:.1f}"),
    ("req/job", "requests_per_job", "{:.1f}"),
    ("all/job", "all_requests_per_job", "{:.1f}"),
)


def header() -> str:
    return f"{'jobs':>5} {'system':>9} " + " ".join(f"{title:>8}" for title, _, _ in COLUMNS)


def row(figures: dict[str, Any]) -> str:
    cells = " ".join(f"{form.format(figures[key]):>8}" for _, key, form in COLUMNS)
    return f"{figures['jobs']:>5} {figures['system']:>9} {cells}"


def ratio_row(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    cells = []
    for _, key, _ in COLUMNS:
        cells.append(f"{ours[key] / peer[key]:>8.2f}" if peer[key] else f"{'-':>8}")
    return f"{ours['jobs']:>5} {'ratio':>9} " + " ".join(cells)


def start_operator(cluster: LocalCluster, log: Path) -> subprocess.Popen[bytes]:
    """The kubetune operator as ServiceAccount kube-system/kubetune-operator (cluster-admin), like
    benchmarks/operator_scale.py runs it; returns the process once its /metrics answers."""
    api = cluster.api_client()
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account("kube-system", {"metadata": {"name": OPERATOR_ACCOUNT}})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": f"kubetune-test-{OPERATOR_ACCOUNT}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": "kube-system"}],
        }
    )
    kubeconfig = cluster.kubeconfig_for_service_account(
        "kube-system", OPERATOR_ACCOUNT, expiration_seconds=24 * 3600
    )
    metrics_port = free_loopback_port()  # (not a fixed port: another benchmark may run on the machine)
    argv = [
        sys.executable,
        *("-m", "kubetune.cli", "operator", "--standalone"),
        *("--metrics-port", str(metrics_port), "--health-port", "0", "--log-format", "plain"),
    ]
    with log.open("wb") as sink:
        operator = subprocess.Popen(
            argv, env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=sink, stderr=subprocess.STDOUT
        )

    def answering() -> bool:
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited ({operator.returncode}): {log.read_text()[-3000:]}")
        return http_get_ok(f"http://127.0.0.1:{metrics_port}/metrics")

    wait_for(answering, 60, "the operator's /metrics")
    return operator


def summary(results: list[dict[str, Any]]) -> None:
    """Prints the table: per round, each system's row and the ratio row."""
    print(header())
    by_round: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for figures in results:
        by_round.setdefault((figures["run"], figures["jobs"]), {})[figures["system"]] = figures
    for (_, _), systems in by_round.items():
        if "kubetune" in systems and "peer" in systems:
            print(row(systems["kubetune"]))
            print(row(systems["peer"]))
            print(ratio_row(systems["kubetune"], systems["peer"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 200], help="rounds (jobs per round)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="apply this many jobs per second (default: burst)"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="repeat the rounds this many times in the same cluster"
    )
    parser.add_argument(
        "--gpu-nodes",
        type=int,
        default=GPU_NODES,
        help="KWOK GPU nodes (32 GPUs each; raised to what the largest round needs)",
    )
    parser.add_argument(
        "--background",
        type=int,
        nargs=2,
        default=(0, 0),
        metavar=("PODS", "JOBS"),
        help="before the rounds, fill the cluster with PODS unrelated pods and JOBS unrelated Jobs (e.g. 5000 500)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every round's figures to FILE")
    args = parser.parse_args(argv)
    # Both systems' pods of the largest round run at once in its namespace: one GPU each.
    gpu_nodes = max(args.gpu_nodes, -(-max(args.jobs) * NODES_PER_JOB // GPUS_PER_NODE))
    # A SIGTERM stops the run through the `finally`s below (operator, cluster, work directory), like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    build = find_peer()  # before anything starts: a missing build is the first thing to know
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-side-by-side-"))
    results: list[dict[str, Any]] = []
    operator: subprocess.Popen[bytes] | None = None
    try:
        (workdir / "audit").mkdir()
        with LocalCluster(
            gpu_nodes=gpu_nodes,
            gpus_per_node=GPUS_PER_NODE,
            workdir=workdir,
            apiserver_args=audit_args(workdir / "audit", AUDIT_POLICY),
        ) as cluster:
            install_crd(cluster)
            operator = start_operator(cluster, workdir / "operator.log")
            peer = PeerManagers(build, cluster)
            peer.start()
            systems = [kubetune_system(operator.pid), peer_system(peer)]
            for system in systems:  # warm-up: watches established, first reconciles done
                run_round(cluster, system, 1, f"warmup-{system.name}", 0.0)
            pods, jobs = args.background
            if pods or jobs:
                watched = {"kubetune operator": operator.pid}
                watched |= {f"peer {name}": pid for name, pid in peer.pids().items()}
                watched["kube-controller-manager"] = kcm_pid(cluster)
                made = cluster_background.make(cluster, pods, jobs, watched)
                print(cluster_background.report(made), flush=True)
            pace = f"{args.rate:g} jobs/s" if args.rate else "in a burst (as fast as one client can)"
            print(
                f"cluster: {gpu_nodes} KWOK nodes x {GPUS_PER_NODE} GPUs; jobs of {NODES_PER_JOB} nodes x 1 GPU; "
                f"applied {pace}; peer: Kubeflow Trainer + JobSet ({build.root.name})",
                flush=True,
            )
            print(header(), flush=True)
            round_index = 0
            for run in range(args.runs):
                for count in args.jobs:
                    order = systems if round_index % 2 == 0 else systems[::-1]
                    round_index += 1
                    for system in order:
                        figures = run_round(cluster, system, count, f"{system.name}-{count}-{run}", args.rate)
                        figures["run"] = run
                        results.append(figures)
                        print(row(figures), flush=True)
                        print(
                            f"{'':>16}CPU s by process: "
                            + ", ".join(f"{k} {v:.1f}" for k, v in figures["cpu_by_process"].items())
                            + "; requests: "
                            + ", ".join(
                                f"{k.rsplit(':', 1)[-1]} {v}" for k, v in figures["requests_by_user"].items()
                            )
                            + f"; apply {figures['apply_seconds']:.1f} s; job create -> last pod bound p50 "
                            + f"{figures['bound_p50']:.3f} s; bound -> Running (KWOK) p50 "
                            + f"{figures['bound_to_running_p50']:.3f} s"
                            + "".join(
                                f"; TrainJob -> first {k[:-1]} write p50 {v:.3f} s"
                                for k, v in figures["stages_p50"].items()
                            )
                            + "; CPU s of every process: "
                            + ", ".join(f"{k} {v:.1f}" for k, v in figures["cpu_by_component"].items()),
                            flush=True,
                        )
            print("\nkubetune / peer (below 1: kubetune less or faster)")
            summary(results)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
