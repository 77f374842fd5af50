"""Every shape of a job trains in containers on the real nodes: 1x1, 1x2 and 2x1 (nodes x processes), one of
them with DeepSpeed ZeRO-2, through the chart-installed operator and the trainer image.

The tiny BERT and its data (tests/e2e/conftest.py `tiny_assets_volumes`) reach the read-only workers
through ConfigMap volumes; each job must reach Succeeded with eval accuracy above chance (0.5).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import PodRecorder, diagnostics, tiny_job, wait_for_phase
from tests.kube.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900, func_only=True)]


@pytest.mark.parametrize(
    ("nodes", "processes", "zero_stage"),
    [(1, 1, 0), (1, 2, 2), (2, 1, 0)],
    ids=["1x1", "1x2-zero2", "2x1"],
)
def test_a_job_of_each_shape_trains_in_containers(
    e2e_cluster: LocalCluster,
    e2e_namespace: str,
    tiny_assets_volumes: dict[str, Any],
    pod_recorder: PodRecorder,
    nodes: int,
    processes: int,
    zero_stage: int,
) -> None:
    name = f"shape-{nodes}x{processes}"
    job = tiny_job(name, tiny_assets_volumes, nodes=nodes, processes=processes, zero_stage=zero_stage)
    started = time.monotonic()
    e2e_cluster.kubectl("apply", "-n", e2e_namespace, "-f", "-", input=yaml.safe_dump(job))
    status = wait_for_phase(e2e_cluster, e2e_namespace, name, {"Succeeded", "Failed"}, 600)
    print(f"\n[e2e] {name} zero{zero_stage}: {status.get('phase')} in {time.monotonic() - started:.0f} s")
    assert status["phase"] == "Succeeded", diagnostics(e2e_cluster, e2e_namespace, name)
    accuracy = status["metrics"]["eval"]["eval_accuracy"]
    print(f"[e2e] {name}: eval_accuracy={accuracy:.3f} progress={status['progress']['summary']}")
    assert accuracy >= 0.75, f"the model did not learn (chance is 0.5): {status['metrics']}"
    # 400 examples / (16 x world size) per epoch, 3 epochs: the world size the shape implies really trained.
    world = nodes * processes
    steps = 3 * -(-400 // (16 * world))
    assert status["progress"]["summary"] == f"{steps}/{steps} (100%)", status["progress"]
    workers = [p for n, p in pod_recorder.pods.items() if n.startswith(f"{name}-worker-")]
    assert len(workers) == nodes
    assert all(p.spec.node_name.startswith("real-") for p in workers)
