"""Whether this node must train on GPUs, and a refusal (exit 2) when it must but no CUDA device is visible.

Without this check a job that asked for GPUs and landed where CUDA cannot start (a driver too old for the
wheels' CUDA, a device plugin that did not hand the container its GPU, a CPU-only torch) would fall back to
gloo on the CPU and "run" hundreds of times slower, without an error.

"Asked for GPUs" is decided, first match wins:
1. KUBETUNE_GPUS_PER_NODE (`NodeContext.gpus_per_node`): the GPUs the launcher gave this node, i.e. the pod's
   GPU request on Kubernetes, or the slice of CUDA_VISIBLE_DEVICES `kubetune run` hands the node (0 when it
   runs on CPU, which `kubetune run` prints as "CPU, gloo").
2. Otherwise the spec, where it says so explicitly: spec.kubernetes.resources.gpusPerNode > 0,
   spec.distribution.backend nccl, or spec.training.mixedPrecision fp16 (fp16 autocast needs CUDA).
A spec that says none of these (e.g. `kubetune train job.yaml` run by hand) may run on CPU.

`kubetune train` (the pod's main process, alive for the whole run) asks torch through `probe_cuda`, in a
short-lived child process: importing torch costs about 300 MB of resident memory, which the launcher would
otherwise hold, on top of the training processes', under the pod's memory limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetune.contract import GPUS_PER_NODE, NodeContext
from kubetune.spec.models import FineTuneJobSpec, MixedPrecision


class DeviceError(RuntimeError):
    """The job needs GPUs this node does not have; the message names the cause and the fix."""


@dataclass(frozen=True)
class GpuRequirement:
    """How many GPUs this node needs (0: none) and which setting said so (for the error message)."""

    gpus: int
    reason: str


def gpu_requirement(spec: FineTuneJobSpec, context: NodeContext) -> GpuRequirement:
    """The GPUs this node must see (see the module docstring for the rule)."""
    if context.gpus_per_node is not None:
        return GpuRequirement(
            context.gpus_per_node,
            f"the launcher gave this node {context.gpus_per_node} GPU(s) ({GPUS_PER_NODE})",
        )
    requested = spec.kubernetes.resources.gpus_per_node
    if requested:
        return GpuRequirement(requested, f"spec.kubernetes.resources.gpusPerNode is {requested}")
    processes = context.procs_per_node  # one GPU per training process
    if spec.distribution.backend == "nccl":
        return GpuRequirement(processes, "spec.distribution.backend is nccl (NCCL runs on CUDA devices only)")
    if spec.training.mixed_precision == MixedPrecision.FP16:
        return GpuRequirement(processes, "spec.training.mixedPrecision is fp16 (fp16 autocast needs CUDA)")
    return GpuRequirement(0, "no GPU was asked for")


def why_no_cuda() -> str:
    """A one-line reason why torch sees no CUDA device, as specific as the evidence allows."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of torch"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "void"):
        return f"CUDA_VISIBLE_DEVICES is {visible!r}, which hides every GPU"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.cuda.init()
        except Exception as error:  # torch reports driver problems as RuntimeError/AssertionError text
            return f"CUDA failed to start: {str(error).strip().splitlines()[0]}"
    for warning in caught:
        text = str(warning.message).strip()
        if "CUDA" in text or "driver" in text.lower():
            return f"CUDA failed to start: {text.splitlines()[0]}"
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return (
            "no NVIDIA device file (/dev/nvidia<N>) in this container: the NVIDIA device plugin (or container "
            "toolkit) did not give it a GPU; check that the node advertises the GPU resource"
        )
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable device"


@dataclass(frozen=True)
class CudaProbe:
    """What torch reports about CUDA: devices visible (0: none) and, when none, why (see why_no_cuda)."""

    device_count: int
    why_not: str = ""

    @property
    def available(self) -> bool:
        return self.device_count > 0


def probe_here() -> CudaProbe:
    """Ask torch in this process."""
    import torch

    if torch.cuda.is_available():
        return CudaProbe(torch.cuda.device_count())
    return CudaProbe(0, why_no_cuda())


_PROBE_CODE = (
    "import json, sys\n"
    "from kubetune_trainer.devices import probe_here\n"
    "probe = probe_here()\n"
    "json.dump({'device_count': probe.device_count, 'why_not': probe.why_not}, sys.stdout)\n"
)
_probes: dict[tuple[str | None, ...], CudaProbe] = {}


def probe_cuda(env: Mapping[str, str] | None = None) -> CudaProbe:
    """Ask torch in a child process with environment `env` (default: this one), once per CUDA setting.

    The child exits before training starts, so the torch import's memory is not held for the run. A child
    that cannot import torch or fails counts as no device, with its error as the reason.
    """
    env = dict(os.environ if env is None else env)
    key = (sys.executable, env.get("CUDA_VISIBLE_DEVICES"), env.get("PYTHONPATH"))
    if key not in _probes:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE_CODE], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            _probes[key] = CudaProbe(**json.loads(done.stdout))
        else:
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            _probes[key] = CudaProbe(0, f"torch could not be asked about CUDA: {last}")
    return _probes[key]


def check_devices(
    spec: FineTuneJobSpec, context: NodeContext, env: Mapping[str, str] | None = None
) -> GpuRequirement:
    """Refuse to start when the node needs GPUs and CUDA cannot give one to each process, or when the job's
    QLoRA cannot run here (it needs CUDA and bitsandbytes, whatever the node was given).

    Asks torch through `probe_cuda(env)` only when the node needs GPUs or QLoRA. Returns the requirement that
    was checked. Raises DeviceError naming the cause.
    """
    from kubetune_trainer.adapters import qlora_problem

    problem = qlora_problem(spec, lambda: probe_cuda(env))
    if problem is not None:
        raise DeviceError(problem)
    requirement = gpu_requirement(spec, context)
    if requirement.gpus == 0:
        return requirement
    probe = probe_cuda(env)
    fix = (
        "run where CUDA works, or train on CPU on purpose: set spec.kubernetes.resources.gpusPerNode: 0 "
        f"(and {GPUS_PER_NODE}=0 for a launcher of your own)"
    )
    if not probe.available:
        raise DeviceError(
            f"this job needs GPUs ({requirement.reason}) but no CUDA device is visible: {probe.why_not}. "
            f"Refusing to fall back to training on CPU; {fix}"
        )
    visible = probe.device_count
    processes = context.procs_per_node
    if visible < processes:
        raise DeviceError(
            f"this node runs {processes} training processes, one GPU each, but torch sees only {visible} "
            f"CUDA device(s) ({requirement.reason}): set spec.distribution.processesPerNode to {visible} or "
            "give the node more GPUs (spec.kubernetes.resources.gpusPerNode)"
        )
    return requirement
