"""The `accelerate launch` configuration of one node.

One config file serves every node of a job (the operator mounts it from a ConfigMap); what differs per node
(the machine rank) is passed on the command line by `accelerate_launch_args`, which wins over the file.

How `accelerate launch` picks its launcher (accelerate/commands/launch.py, `launch_command`), and so what we
ask for:
- DeepSpeed (`--use_deepspeed`): torchrun with `nproc_per_node` processes, any world size, 1 included.
- MULTI_GPU (`--multi_gpu`): torchrun + DDP; refused for fewer than 2 processes ("You need to use at least 2
  processes to use `--multi_gpu`").
- NO (no flag): the "simple launcher", one plain child process and no process group, which is what
  `accelerate config` writes for one GPU. A gang of 1 node x 1 process without DeepSpeed uses it.
Every shape still goes through `accelerate launch` and the same worker module, so `kubetune run` and a pod
launch identically.
"""

from __future__ import annotations

from typing import Any

from kubetune.contract import NodeContext
from kubetune.spec.models import FineTuneJobSpec

# The per-process entry point `accelerate launch` runs (python -m ...).
WORKER_MODULE = "kubetune_trainer.worker"


def distributed_type(spec: FineTuneJobSpec, world_size: int) -> str:
    """Accelerate's distributed type for a gang of `world_size` processes.

    DEEPSPEED when ZeRO (or a raw DeepSpeed config) is on, whatever the world size; otherwise NO (one plain
    process) for a world size of 1 and MULTI_GPU (torchrun + DDP) above. On machines without GPUs the launcher
    adds ACCELERATE_USE_CPU=1 to MULTI_GPU, which keeps the torchrun launch but trains on CPU over gloo
    (`use_cpu: true` in the file would start a single process instead).
    """
    if spec.distribution.deepspeed.enabled:
        return "DEEPSPEED"
    if world_size == 1:
        return "NO"
    return "MULTI_GPU"


def accelerate_config(
    spec: FineTuneJobSpec, context: NodeContext, deepspeed_config_path: str | None = None
) -> dict[str, Any]:
    """The accelerate YAML (as a dict) for `context`'s gang.

    `deepspeed_config_path` is where the DeepSpeed JSON will be (required when DeepSpeed is on).
    Raises ValueError when DeepSpeed is on and no path is given.
    """
    kind = distributed_type(spec, context.world_size)
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": kind,
        "num_machines": context.num_nodes,
        "num_processes": context.world_size,
        "machine_rank": context.node_rank,
        "main_process_ip": context.main_addr,
        "main_process_port": context.main_port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": str(spec.training.mixed_precision),
        "downcast_bf16": "no",
        "use_cpu": False,
        "gpu_ids": "all",
        "main_training_function": "main",
        "debug": False,
    }
    if kind == "DEEPSPEED":
        if not deepspeed_config_path:
            raise ValueError(
                "DeepSpeed is enabled: pass deepspeed_config_path, the file deepspeed_config() goes to"
            )
        config["deepspeed_config"] = {
            "deepspeed_config_file": deepspeed_config_path,
            # torchrun on every node; the default (pdsh) needs ssh between pods.
            "deepspeed_multinode_launcher": "standard",
            "zero3_init_flag": spec.distribution.deepspeed.zero_stage == 3,
        }
    return config


def accelerate_launch_args(spec: FineTuneJobSpec, context: NodeContext, config_path: str) -> list[str]:
    """Arguments after `accelerate launch` that start this node's processes running the worker module."""
    args = [
        "--config_file",
        config_path,
        "--num_machines",
        str(context.num_nodes),
        "--num_processes",
        str(context.world_size),
        "--machine_rank",
        str(context.node_rank),
        "--main_process_ip",
        context.main_addr,
        "--main_process_port",
        str(context.main_port),
        "--mixed_precision",
        str(spec.training.mixed_precision),
        # A failed rank ends the gang; restarts are the operator's (gang) decision, not torchrun's.
        "--max_restarts",
        "0",
        "--module",
        WORKER_MODULE,
    ]
    kind = distributed_type(spec, context.world_size)
    if kind != "NO":
        # torchrun's static rendezvous waits 600 s by default for the other nodes to join.
        args[-2:-2] = ["--rdzv_conf", f"timeout={spec.distribution.rendezvous_timeout_seconds}"]
    if kind == "DEEPSPEED":
        args[0:0] = ["--use_deepspeed", "--deepspeed_multinode_launcher", "standard"]
    elif kind == "MULTI_GPU":
        args[0:0] = ["--multi_gpu"]
    else:
        # The simple launcher turns any non-zero exit of its child (75 after a preemption, 2 for a bad job) into
        # a CalledProcessError traceback; `kubetune train` reads the real outcome from the worker's status file,
        # so that traceback would only bury the worker's own message.
        args[0:0] = ["--quiet"]
    return args
