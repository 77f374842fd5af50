"""The side-by-side benchmark (benchmarks/side_by_side.py) runs both systems end to end at a tiny size, and
reads its audit-log figures right.

A check that the benchmark works and that both systems really created and ran their pods, not a timing
assertion: the figures live in the benchmark's own output (benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from benchmarks.side_by_side import (
    NODES_PER_JOB,
    kubetune_system,
    pods_created_seconds,
    read_audit,
    requests_by_user,
)

REPO = Path(__file__).resolve().parents[2]


def audit_event(
    resource: str,
    name: str,
    at: str,
    labels: dict[str, str] | None = None,
    namespace: str = "bench",
    code: int = 201,
    user: str = "u",
) -> str:
    event: dict[str, Any] = {
        "verb": "create",
        "user": {"username": user},
        "objectRef": {"resource": resource, "namespace": namespace, "name": name},
        "responseStatus": {"code": code},
        "stageTimestamp": at,
    }
    if labels is not None:
        event["requestObject"] = {"metadata": {"labels": labels}}
    return json.dumps(event)


def test_pods_created_is_the_last_pod_create_of_the_job_after_its_create(tmp_path: Path) -> None:
    label = {"kubetune.io/job-name": "job-0"}
    lines = [audit_event("finetunejobs", "job-0", "2026-11-26T01:00:00.100000Z")]
    # pods by generateName (no name in objectRef): the request's labels say whose they are
    lines += [
        audit_event("pods", "", f"2026-11-26T01:00:00.{(200 + 50 * i) * 1000:06d}Z", label)
        for i in range(NODES_PER_JOB)
    ]
    lines.append(audit_event("pods", "", "2026-11-26T01:00:09.000000Z", label, code=409))  # refused
    lines.append(audit_event("pods", "", "2026-11-26T01:00:09.000000Z", label, namespace="other"))
    lines.append(audit_event("finetunejobs", "job-1", "2026-11-26T01:00:00.100000Z"))  # short of pods
    lines.append(audit_event("pods", "", "2026-11-26T01:00:00.300000Z", {"kubetune.io/job-name": "job-1"}))
    log = tmp_path / "audit.log"
    log.write_text("\n".join(lines) + '\n{"partial')  # a line still being written is not read

    found = pods_created_seconds(read_audit(log, 0), kubetune_system(1), "bench")

    assert list(found) == ["job-0"]
    assert found["job-0"] == pytest.approx(0.050 * (NODES_PER_JOB - 1) + 0.100, abs=1e-6)


def test_requests_are_counted_per_user_inside_the_round_only(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        "\n".join(
            [
                audit_event("pods", "a", "2026-11-26T01:00:01.000000Z", user="op"),
                audit_event("pods", "b", "2026-11-26T01:00:02.000000Z", user="op"),
                audit_event("pods", "c", "2026-11-26T01:00:02.500000Z", user="kcm"),
                audit_event("pods", "d", "2026-11-26T01:00:09.000000Z", user="op"),  # after the round
            ]
        )
        + "\n"
    )
    began = datetime(2026, 11, 26, 1, 0, 0, 500000, tzinfo=UTC).timestamp()
    counts = requests_by_user(read_audit(log, 0), began, began + 3)
    assert counts == {"op": 2, "kcm": 1}


@pytest.mark.cluster
def test_both_systems_create_and_run_their_pods_and_the_figures_are_printed(kube_cluster: Any) -> None:
    # (kube_cluster: the cluster binaries are there; the benchmark starts a cluster of its own)
    from tests.kube.peer import PeerNotFound, find_peer

    try:
        find_peer()
    except PeerNotFound as error:
        pytest.fail(str(error), pytrace=False)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.side_by_side", "--jobs", "3", "--gpu-nodes", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = {cells[1]: cells for line in completed.stdout.splitlines() if (cells := line.split())[:1] == ["3"]}
    assert set(rows) == {"kubetune", "peer", "ratio"}, completed.stdout
    for system in ("kubetune", "peer"):
        # (a round only ends when every job's 4 pods were created (audit log) and seen Running (watch))
        pods_p50, pods_p99, pods_max, run_p50 = map(float, rows[system][2:6])
        assert 0 < pods_p50 <= pods_p99 <= pods_max and run_p50 > 0, completed.stdout
        cpu, rss, _, requests_per_job = map(float, rows[system][9:13])
        assert cpu > 0 and rss > 0 and requests_per_job >= NODES_PER_JOB, completed.stdout
    assert "trainer-controller-manager" in completed.stdout and "job-controller" in completed.stdout
