"""Behaviour side by side (issue 14): what kubetune and Kubeflow Trainer v2 + JobSet do when things go wrong.

One local control plane (KWOK GPU nodes) runs both systems, as in benchmarks/side_by_side.py. For each system
and scenario a fresh job of 4 nodes is applied and left to run (all 4 pods Running), then:

* `exit1`: worker 1's container exits 1 (KWOK ends the pod as its kubelet would: phase Failed, exit code 1);
* `evict`: worker 1 is evicted through the Eviction API;
* `node-lost`: the KWOK node that runs worker 1 is deleted (its pods are then garbage-collected by
  kube-controller-manager);
* `suspend`: the job is suspended (spec.suspend: true), and resumed once its pods are gone (recovered: 4 new
  pods Running; one poll, about 0.3 s, is the finest time the script can see);
* `delete`: the job is deleted while running.

Polling every 0.25 s, it reports per row: `detect s`, from the fault to the first change of what `kubectl get`
shows for the job (for `delete`: to the first pod marked for deletion); `recover s`, from the fault to 4 pods
Running again without the hit pod (`suspend`: from the resume; `delete`: to all pods gone); `restarts`, what
the system counts (kubetune: status.restarts; the peer: its JobSet's status.restarts, and the Job's failed
pods in brackets); `final`, the job's phase (kubetune) or its TrainJob conditions that are True (peer); and the
`kubectl get` line the user sees at the end.

    python -m benchmarks.side_by_side_behaviour [--scenarios exit1 evict node-lost suspend delete] [--wait 60]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from benchmarks.operator_scale import install_crd
from benchmarks.side_by_side import NODES_PER_JOB, System, kubetune_system, peer_system, start_operator
from tests.kube.harness import LocalCluster, wait_for
from tests.kube.peer import PeerManagers, find_peer

SCENARIOS = ("exit1", "evict", "node-lost", "suspend", "delete")


@dataclass
class Outcome:
    system: str
    scenario: str
    detect: float | None
    recover: float | None
    restarts: str
    final: str
    shown: str


def pods(core: Any, namespace: str, system: System, job: str) -> list[Any]:
    """The job's pods that are not being deleted."""
    found = core.list_namespaced_pod(namespace, label_selector=f"{system.pod_label}={job}").items
    return [p for p in found if p.metadata.deletion_timestamp is None]


def shown(cluster: LocalCluster, system: System, namespace: str, job: str) -> str:
    """What `kubectl get <kind> <job>` shows, without the AGE column (it changes by itself)."""
    result = cluster.kubectl("get", system.plural, job, "-n", namespace, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or len(lines) < 2:
        return result.stderr.strip() or "(nothing)"
    header, row = lines[0], lines[1]
    age = header.find("AGE")
    if age < 0:
        return row
    end = header.find(" ", age + 4)
    while end >= 0 and end < len(header) and header[end] == " ":
        end += 1
    return (row[:age] + (row[end:] if end > 0 else "")).rstrip()


def counted(custom: Any, system: System, namespace: str, job: str) -> tuple[str, str]:
    """(restarts as the system counts them, final phase or conditions)."""
    with contextlib.suppress(client.ApiException):
        body = custom.get_namespaced_custom_object(
            system.group, system.version, namespace, system.plural, job
        )
        status = body.get("status") or {}
        if system.name == "kubetune":
            return str(status.get("restarts", 0)), str(status.get("phase", "?"))
        conditions = [c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"]
        restarts, failed = "?", "?"
        with contextlib.suppress(client.ApiException):
            jobset = custom.get_namespaced_custom_object(
                "jobset.x-k8s.io", "v1alpha2", namespace, "jobsets", job
            )
            restarts = str((jobset.get("status") or {}).get("restarts", 0))
        with contextlib.suppress(client.ApiException, IndexError):
            jobs = client.BatchV1Api(custom.api_client).list_namespaced_job(namespace).items
            failed = str(sum(j.status.failed or 0 for j in jobs))
        return f"{restarts} ({failed} failed pods)", ",".join(conditions) or "(no condition True)"
    return "-", "(gone)"


def run_scenario(cluster: LocalCluster, system: System, scenario: str, index: int, wait: float) -> Outcome:
    api = cluster.api_client()
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    namespace, job = f"{system.name}-{scenario}-{index}", "job"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), 30, "default SA")
    custom.create_namespaced_custom_object(
        system.group, system.version, namespace, system.plural, system.document(job)
    )

    def all_running() -> list[Any] | None:
        found = pods(core, namespace, system, job)
        running = [p for p in found if p.status.phase == "Running"]
        return found if len(running) == NODES_PER_JOB == len(found) else None

    before = wait_for(all_running, 120, f"{system.name}'s job Running")
    time.sleep(2.0)  # let the job's status settle on Running
    baseline = shown(cluster, system, namespace, job)
    hit = sorted(before, key=lambda p: p.metadata.name)[1]
    began = time.monotonic()
    if scenario == "exit1":
        cluster.complete_pod(namespace, hit.metadata.name, exit_code=1, message="worker exits 1")
    elif scenario == "evict":
        core.create_namespaced_pod_eviction(
            hit.metadata.name,
            namespace,
            {"metadata": {"name": hit.metadata.name, "namespace": namespace}},
        )
    elif scenario == "node-lost":
        core.delete_node(hit.spec.node_name)
    elif scenario in ("suspend", "delete"):
        pass
    if scenario == "suspend":
        custom.patch_namespaced_custom_object(
            system.group, system.version, namespace, system.plural, job, {"spec": {"suspend": True}}
        )
    if scenario == "delete":
        custom.delete_namespaced_custom_object(system.group, system.version, namespace, system.plural, job)
    detect: float | None = None
    recover: float | None = None
    resumed_at: float | None = None
    deadline = began + wait
    while time.monotonic() < deadline:
        now = time.monotonic()
        current = core.list_namespaced_pod(namespace, label_selector=f"{system.pod_label}={job}").items
        if detect is None:
            if scenario == "delete":
                if any(p.metadata.deletion_timestamp for p in current) or not current:
                    detect = now - began
            elif shown(cluster, system, namespace, job) != baseline:
                detect = now - began
        live = [p for p in current if p.metadata.deletion_timestamp is None]
        running = [p for p in live if p.status.phase == "Running"]
        if scenario == "delete":
            if not current:
                recover = now - began
                break
        elif scenario == "suspend":
            old_uids = {p.metadata.uid for p in before}
            if resumed_at is None and not any(p.metadata.uid in old_uids for p in current):
                custom.patch_namespaced_custom_object(
                    system.group, system.version, namespace, system.plural, job, {"spec": {"suspend": False}}
                )
                resumed_at = time.monotonic()
            elif (
                resumed_at is not None
                and len(running) == NODES_PER_JOB == len(live)
                and not any(p.metadata.uid in old_uids for p in live)
            ):
                recover = now - resumed_at
                break
        elif len(running) == NODES_PER_JOB == len(live) and all(
            p.metadata.uid != hit.metadata.uid for p in live
        ):
            recover = now - began
            break
        time.sleep(0.25)
    time.sleep(2.0)  # what the user sees once things settle
    restarts, final = counted(custom, system, namespace, job)
    outcome = Outcome(
        system.name, scenario, detect, recover, restarts, final, shown(cluster, system, namespace, job)
    )
    with contextlib.suppress(client.ApiException):
        custom.delete_namespaced_custom_object(system.group, system.version, namespace, system.plural, job)
    core.delete_namespace(namespace)
    return outcome


def cell(seconds: float | None, wait: float) -> str:
    return f"{seconds:.1f}" if seconds is not None else f"none in {wait:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to watch each scenario")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    build = find_peer()
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-behaviour-"))
    operator: subprocess.Popen[bytes] | None = None
    try:
        with LocalCluster(gpu_nodes=12, gpus_per_node=8, workdir=workdir) as cluster:
            install_crd(cluster)
            operator = start_operator(cluster, workdir / "operator.log")
            peer = PeerManagers(build, cluster)
            peer.start()
            systems = [kubetune_system(operator.pid), peer_system(peer)]
            print("| scenario | system | detect s | recover s | restarts | final | kubectl get (no AGE) |")
            print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
            for index, scenario in enumerate(args.scenarios):
                for system in systems:
                    o = run_scenario(cluster, system, scenario, index, args.wait)
                    print(
                        f"| {o.scenario} | {o.system} | {cell(o.detect, args.wait)} | {cell(o.recover, args.wait)} "
                        f"| {o.restarts} | {o.final} | `{' '.join(o.shown.split())}` |",
                        flush=True,
                    )
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
