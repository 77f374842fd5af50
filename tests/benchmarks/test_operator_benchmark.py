"""The operator benchmark runs end to end at a tiny size, and reads "pods created" off the audit log right.

A check that `benchmarks/operator_scale.py` works, not a timing assertion: the latency targets live in the
benchmark's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.operator_scale import NODES_PER_JOB, server_created_seconds

REPO = Path(__file__).resolve().parents[2]


def audit_event(resource: str, name: str, at: str, namespace: str = "bench", code: int = 201) -> str:
    return json.dumps(
        {
            "verb": "create",
            "objectRef": {"resource": resource, "namespace": namespace, "name": name},
            "responseStatus": {"code": code},
            "stageTimestamp": at,
        }
    )


def test_pods_created_is_the_last_worker_create_after_the_job_create(tmp_path: Path) -> None:
    lines = [audit_event("finetunejobs", "job-000", "2026-11-26T01:00:00.100000Z")]
    lines += [
        audit_event("pods", f"job-000-worker-{i}", f"2026-11-26T01:00:00.{(200 + 50 * i) * 1000:06d}Z")
        for i in range(NODES_PER_JOB)
    ]
    # refused creates, other namespaces and jobs short of pods do not count
    lines.append(audit_event("pods", "job-000-worker-0", "2026-11-26T01:00:09.000000Z", code=409))
    lines.append(audit_event("pods", "job-000-worker-9", "2026-11-26T01:00:09.000000Z", namespace="other"))
    lines.append(audit_event("finetunejobs", "job-001", "2026-11-26T01:00:00.100000Z"))
    lines.append(audit_event("pods", "job-001-worker-0", "2026-11-26T01:00:00.300000Z"))
    log = tmp_path / "audit.log"
    log.write_text("\n".join(lines) + "\n")

    found = server_created_seconds(log, "bench")

    assert list(found) == ["job-000"]
    assert found["job-000"] == pytest.approx(0.100 + 0.050 * (NODES_PER_JOB - 1), abs=1e-6)


@pytest.mark.cluster
def test_the_benchmark_prints_its_figures_for_a_small_round(kube_cluster: Any) -> None:
    # (kube_cluster: the cluster binaries are there; the benchmark starts a cluster of its own)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.operator_scale", "--jobs", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    row = next(line.split() for line in completed.stdout.splitlines() if line.split()[:1] == ["3"])
    pods_p50, pods_p99, pods_max, seen_p50 = map(float, row[2:6])
    assert 0 < pods_p50 <= pods_p99 <= pods_max
    assert seen_p50 > 0
    assert "kube-apiserver" in completed.stdout  # the per-process CPU line


@pytest.mark.cluster
def test_the_queued_benchmark_drains_a_small_queue_without_a_failure(kube_cluster: Any) -> None:
    """benchmarks/operator_queued.py end to end at a tiny size (its own cluster, a real Kueue)."""
    from tests.kube.kueue import KueueNotFound, find_kueue

    try:
        find_kueue()
    except KueueNotFound as error:
        pytest.fail(str(error), pytrace=False)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.operator_queued", "--jobs", "3", "--fits", "1", "--dwell", "0.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "failed: 0 []" in completed.stdout, completed.stdout
    assert "admission -> 4 pods created (watch): p50" in completed.stdout
    assert "over 3 jobs" in completed.stdout


def test_the_benchmarks_operator_has_the_images_environment() -> None:
    """The benchmark's operator allocates memory as the image's does (MALLOC_ARENA_MAX, Dockerfile)."""
    from benchmarks.operator_scale import OPERATOR_IMAGE_ENV
    from tests.deploy.dockerfile import parse_dockerfile

    image_env = parse_dockerfile(REPO / "Dockerfile").stage("operator").key_values("ENV")
    assert {name: image_env[name] for name in OPERATOR_IMAGE_ENV} == OPERATOR_IMAGE_ENV


def timed_event(
    verb: str,
    resource: str,
    name: str,
    received: float,
    answered: float,
    subresource: str = "",
    code: int = 200,
    uri: str = "",
    request: dict[str, Any] | None = None,
) -> str:
    """One audit event in the queued benchmark's namespace, times in seconds after 01:00:00."""

    def stamp(seconds: float) -> str:
        return f"2026-12-02T01:00:{seconds:09.6f}Z"

    event: dict[str, Any] = {
        "verb": verb,
        "objectRef": {"resource": resource, "namespace": "queued", "name": name, "subresource": subresource},
        "responseStatus": {"code": code},
        "requestReceivedTimestamp": stamp(received),
        "stageTimestamp": stamp(answered),
        "requestURI": uri,
    }
    if request is not None:
        event["requestObject"] = request
    return json.dumps(event)


def test_the_queued_benchmark_splits_admission_to_pods_into_its_steps(tmp_path: Path) -> None:
    """The audit log of one queued job, admitted while another job was still being applied: each moment is
    the API server's, and the reconcile that acts on the admission is the one whose reads follow it."""
    from benchmarks.admission_segments import read_job_times, summarize, waves

    admission = {"status": {"admission": {"clusterQueue": "bench"}, "conditions": [{"type": "Admitted"}]}}
    lines = [
        timed_event("create", "finetunejobs", "job-000", 1.0, 1.1, code=201),
        timed_event("create", "workloads", "finetunejob-job-000", 1.2, 1.3, code=201),
        # an earlier reconcile's reads (before the admission) do not count
        timed_event("get", "finetunejobs", "job-000", 1.4, 1.5),
        timed_event("get", "workloads", "finetunejob-job-000", 1.5, 1.6),
        timed_event("patch", "workloads", "finetunejob-job-000", 2.0, 2.1, "status", request=admission),
        # the operator's first reconcile, still writing the job's children, ends with its status patch
        timed_event("patch", "finetunejobs", "job-000", 2.2, 2.3, "status"),
        timed_event("create", "finetunejobs", "job-001", 2.5, 2.6, code=201),
        # the reconcile after the admission: its reads, then the pods
        timed_event("get", "finetunejobs", "job-000", 2.4, 2.9),
        timed_event(
            "list",
            "pods",
            "",
            2.4,
            3.0,
            uri="/api/v1/namespaces/queued/pods?labelSelector=kubetune.io%2Fjob-name%3Djob-000",
        ),
        timed_event("get", "workloads", "finetunejob-job-000", 2.41, 3.1),
        timed_event(
            "patch",
            "workloads",
            "finetunejob-job-000",
            5.0,
            5.1,
            "status",
            request={"status": {"admission": None}},
        ),
        timed_event("patch", "finetunejobs", "job-000", 5.2, 5.3, "status"),  # a later status patch
    ]
    lines += [
        timed_event("create", "pods", f"job-000-worker-{i}", 3.2, 3.5 + 0.1 * i, code=201) for i in range(4)
    ]
    log = tmp_path / "audit.log"
    log.write_text("\n".join(lines) + "\n")

    times = read_job_times(log, "queued", workers=4)

    job = times["job-000"]
    assert job.segment("applied", "workload_created") == pytest.approx(0.2, abs=1e-6)
    assert job.segment("workload_created", "admitted") == pytest.approx(0.8, abs=1e-6)
    assert job.segment("admitted", "first_done") == pytest.approx(0.2, abs=1e-6)
    assert job.segment("first_done", "picked_up") == pytest.approx(0.1, abs=1e-6)  # its GET of the job
    assert job.segment("picked_up", "reads_done") == pytest.approx(0.7, abs=1e-6)  # the Workload's answer
    assert job.segment("reads_done", "pods_created") == pytest.approx(0.7, abs=1e-6)  # the 4th pod's
    groups = waves(times)
    assert groups["admitted during the applies"] == ["job-000"]  # before job-001's create was answered
    rows = {(group, label): values for group, label, *values in summarize(times, groups)}
    assert rows[("all", "admitted -> pods created")] == pytest.approx([1, 1.7, 1.7, 1.7], abs=1e-6)
