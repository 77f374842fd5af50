"""A job that asked for GPUs never trains on CPU: without a visible CUDA device `kubetune train` exits 2 at
once, naming the setting that asked for GPUs and why CUDA is not there. A CPU job is not affected.

The refusals run the real `kubetune train` with the real torch. CUDA_VISIBLE_DEVICES="" hides any GPU the
machine has, so the test observes the no-CUDA case on any machine (CI has none anyway).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubetune.contract import EXIT_INVALID_SPEC, GPUS_PER_NODE, NodeContext
from kubetune.spec import parse_spec
from kubetune_trainer.devices import check_devices, gpu_requirement

from tests.trainer.helpers import Assets, child_env, make_job, node_env

pytestmark = pytest.mark.timeout(120)


def _train(job: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "train"], env=env, capture_output=True, text=True, timeout=90
    )


def test_a_node_given_a_gpu_without_cuda_exits_2_at_once_naming_the_cause(
    tmp_path: Path, assets: Assets
) -> None:
    """As in a pod whose GPU the device plugin did not deliver: the launcher says 1 GPU, CUDA shows none."""
    job = make_job(tmp_path, assets)
    env = node_env(child_env(tmp_path), job, rank=0, nodes=1, procs=1, port=29999)
    env.update({GPUS_PER_NODE: "1", "CUDA_VISIBLE_DEVICES": ""})
    started = time.monotonic()
    result = _train(job, env)
    assert result.returncode == EXIT_INVALID_SPEC, result.stdout + result.stderr
    assert time.monotonic() - started < 60, "refused at start, not after loading the model"
    last = result.stderr.strip().splitlines()[-1]  # the termination message (FallbackToLogsOnError)
    assert "this job needs GPUs (the launcher gave this node 1 GPU(s) (KUBETUNE_GPUS_PER_NODE))" in last
    assert "no CUDA device is visible: CUDA_VISIBLE_DEVICES is '', which hides every GPU" in last
    assert "Refusing to fall back to training on CPU" in last
    assert not (tmp_path / "job-out").exists(), "nothing was trained or written"


def test_a_spec_that_asks_for_gpus_is_refused_without_cuda_by_kubetune_train(
    tmp_path: Path, assets: Assets
) -> None:
    """No launcher variable (e.g. a launcher of the user's own): the spec's gpusPerNode decides."""
    job = make_job(
        tmp_path, assets, kubernetes={"resources": {"gpusPerNode": 2}}, distribution={"processesPerNode": 2}
    )
    env = node_env(child_env(tmp_path), job, rank=0, nodes=1, procs=2, port=29999)
    env.pop(GPUS_PER_NODE, None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = _train(job, env)
    assert result.returncode == EXIT_INVALID_SPEC, result.stdout + result.stderr
    assert "this job needs GPUs (spec.kubernetes.resources.gpusPerNode is 2)" in result.stderr
    assert "set spec.kubernetes.resources.gpusPerNode: 0" in result.stderr


def _spec(**blocks: Any) -> Any:
    return parse_spec({"model": {"name": "m"}, "dataset": {"name": "glue", "config": "mrpc"}, **blocks})


def _context(gpus: int | None = None, procs: int = 2) -> NodeContext:
    return NodeContext("/job.yaml", 0, 1, procs, "127.0.0.1", 29500, gpus_per_node=gpus)


@pytest.mark.parametrize(
    ("blocks", "gpus", "expected"),
    [
        ({}, None, (0, "no GPU was asked for")),
        ({"kubernetes": {"resources": {"gpusPerNode": 0}}}, None, (0, "no GPU was asked for")),
        ({"kubernetes": {"resources": {"gpusPerNode": 4}}}, None, (4, "gpusPerNode is 4")),
        ({"distribution": {"processesPerNode": 2, "backend": "nccl"}}, None, (2, "backend is nccl")),
        ({"training": {"mixedPrecision": "fp16"}}, None, (2, "mixedPrecision is fp16")),
        ({"training": {"mixedPrecision": "bf16"}}, None, (0, "no GPU was asked for")),  # bf16 runs on CPU
        # The launcher's word wins both ways: kubetune run on a CPU machine gives 0 to a GPU spec.
        ({"kubernetes": {"resources": {"gpusPerNode": 4}}}, 0, (0, "gave this node 0 GPU(s)")),
        ({}, 8, (8, "gave this node 8 GPU(s)")),
    ],
)
def test_what_asked_for_gpus_means(
    blocks: dict[str, Any], gpus: int | None, expected: tuple[int, str]
) -> None:
    requirement = gpu_requirement(_spec(**blocks), _context(gpus))
    assert requirement.gpus == expected[0]
    assert expected[1] in requirement.reason


def test_a_cpu_job_passes_the_check_on_a_machine_without_cuda() -> None:
    assert check_devices(_spec(), _context()).gpus == 0
    assert NodeContext.from_env({**_context(0).to_env()}).gpus_per_node == 0
    assert NodeContext.from_env({k: v for k, v in _context(None).to_env().items()}).gpus_per_node is None


def test_the_node_launcher_asks_about_cuda_without_importing_torch(tmp_path: Path) -> None:
    """`kubetune train` lives as long as the run: it asks torch in a child process (probe_cuda), so it does not
    hold torch's ~300 MB. Checked in a fresh interpreter: after the GPU check (refused, no CUDA visible) and
    after building the workers' environment, torch is still not imported there."""
    code = """
import sys
from kubetune.contract import NodeContext
from kubetune.spec import parse_spec
from kubetune_trainer import node_launcher
from kubetune_trainer.devices import DeviceError, check_devices
spec = parse_spec({"model": {"name": "m"}, "dataset": {"name": "d"}, "kubernetes": {"resources": {"gpusPerNode": 1}}})
context = NodeContext("/job.yaml", 0, 1, 1, "127.0.0.1", 29500, gpus_per_node=1)
try:
    check_devices(spec, context, {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
except DeviceError as error:
    print("refused:", error)
else:
    raise SystemExit("not refused")
from pathlib import Path
files = node_launcher.LaunchFiles(Path("."), Path("a.yaml"), None, Path("."))
env = node_launcher.child_environment(node_launcher.FineTuneJob.model_validate(
    {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j"}, "spec": spec.model_dump(by_alias=True)}
), files, {"CUDA_VISIBLE_DEVICES": ""})
print("cpu switch:", env.get("ACCELERATE_USE_CPU"))
print("torch imported:", "torch" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_env(tmp_path), capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert "CUDA_VISIBLE_DEVICES is '', which hides every GPU" in done.stdout
    assert "cpu switch: 1" in done.stdout
    assert "torch imported: False" in done.stdout
