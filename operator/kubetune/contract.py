"""The environment contract between a launcher (the operator's pods, or `kubetune run`) and `kubetune train`.

Written down once, here, and used by both sides: the operator puts these variables into each worker pod, the
local runner into each simulated node's process, and `kubetune train` reads them back with `NodeContext.from_env`.

| variable                       | meaning                                                        |
| ------------------------------ | -------------------------------------------------------------- |
| KUBETUNE_JOB_FILE              | path of the FineTuneJob YAML (the whole document)              |
| KUBETUNE_NODE_RANK             | this node's index, 0 … nodes-1 (pod index on Kubernetes)       |
| KUBETUNE_NUM_NODES             | number of nodes in the gang                                    |
| KUBETUNE_PROCS_PER_NODE        | training processes on this node                                |
| KUBETUNE_MAIN_ADDR             | address of node 0 (its stable DNS name, or 127.0.0.1 locally)  |
| KUBETUNE_MAIN_PORT             | rendezvous port on node 0                                      |
| KUBETUNE_OUTPUT_DIR            | overrides spec.output.path (optional)                          |
| KUBETUNE_EVENTS_FILE           | JSON-lines file that progress events are appended to (optional)|
| KUBETUNE_TERMINATION_LOG       | termination-message file (default /dev/termination-log)        |
| KUBETUNE_JOB_NAME / _NAMESPACE | identity of the FineTuneJob, for the status reporter (optional)|
| KUBETUNE_ATTEMPT               | gang restart counter, 0 for the first attempt (optional)       |
| KUBETUNE_GPUS_PER_NODE         | GPUs the launcher gave this node (optional; 0: train on CPU).  |
|                                | With N > 0 `kubetune train` exits 2 unless CUDA shows a device |
|                                | per process; unset: decided from the spec (trainer devices.py) |
| HF_TOKEN                       | Hugging Face token (from a Secret on Kubernetes)               |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

JOB_FILE = "KUBETUNE_JOB_FILE"
NODE_RANK = "KUBETUNE_NODE_RANK"
NUM_NODES = "KUBETUNE_NUM_NODES"
PROCS_PER_NODE = "KUBETUNE_PROCS_PER_NODE"
MAIN_ADDR = "KUBETUNE_MAIN_ADDR"
MAIN_PORT = "KUBETUNE_MAIN_PORT"
OUTPUT_DIR = "KUBETUNE_OUTPUT_DIR"
EVENTS_FILE = "KUBETUNE_EVENTS_FILE"
TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"
JOB_NAME = "KUBETUNE_JOB_NAME"
JOB_NAMESPACE = "KUBETUNE_JOB_NAMESPACE"
ATTEMPT = "KUBETUNE_ATTEMPT"
GPUS_PER_NODE = "KUBETUNE_GPUS_PER_NODE"
HF_TOKEN = "HF_TOKEN"

DEFAULT_TERMINATION_LOG = "/dev/termination-log"

# Exit codes of `kubetune train`, so a launcher can tell a preemption from a crash.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_SPEC = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; rerun to resume.


class ContractError(ValueError):
    """A launcher variable is missing or malformed."""


@dataclass(frozen=True)
class NodeContext:
    """Everything one node needs to join the gang, independent of how it was launched."""

    job_file: str
    node_rank: int
    num_nodes: int
    procs_per_node: int
    main_addr: str
    main_port: int
    output_dir: str | None = None
    events_file: str | None = None
    termination_log: str = DEFAULT_TERMINATION_LOG
    job_name: str | None = None
    job_namespace: str | None = None
    attempt: int = 0
    gpus_per_node: int | None = None  # None: not said by the launcher

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.procs_per_node

    def to_env(self) -> dict[str, str]:
        """The variables a launcher sets for this node (optional ones only when set)."""
        env = {
            JOB_FILE: self.job_file,
            NODE_RANK: str(self.node_rank),
            NUM_NODES: str(self.num_nodes),
            PROCS_PER_NODE: str(self.procs_per_node),
            MAIN_ADDR: self.main_addr,
            MAIN_PORT: str(self.main_port),
            TERMINATION_LOG: self.termination_log,
            ATTEMPT: str(self.attempt),
        }
        optional = {
            OUTPUT_DIR: self.output_dir,
            EVENTS_FILE: self.events_file,
            JOB_NAME: self.job_name,
            JOB_NAMESPACE: self.job_namespace,
        }
        env.update({k: v for k, v in optional.items() if v})
        if self.gpus_per_node is not None:
            env[GPUS_PER_NODE] = str(self.gpus_per_node)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodeContext:
        """Read the contract back. Raises ContractError naming the variable that is missing or wrong."""
        source = os.environ if env is None else env

        def required(name: str) -> str:
            value = source.get(name, "").strip()
            if not value:
                raise ContractError(f"{name} is not set: the launcher must set it (see kubetune.contract)")
            return value

        def integer(name: str, default: str | None = None, minimum: int = 0) -> int:
            raw = source.get(name, default) if default is not None else required(name)
            try:
                value = int(str(raw))
            except ValueError:
                raise ContractError(f"{name}={raw!r} is not a whole number") from None
            if value < minimum:
                raise ContractError(f"{name}={value} must be at least {minimum}")
            return value

        context = cls(
            job_file=required(JOB_FILE),
            node_rank=integer(NODE_RANK, "0"),
            num_nodes=integer(NUM_NODES, "1", minimum=1),
            procs_per_node=integer(PROCS_PER_NODE, "1", minimum=1),
            main_addr=source.get(MAIN_ADDR, "127.0.0.1") or "127.0.0.1",
            main_port=integer(MAIN_PORT, "29500", minimum=1),
            output_dir=source.get(OUTPUT_DIR) or None,
            events_file=source.get(EVENTS_FILE) or None,
            termination_log=source.get(TERMINATION_LOG) or DEFAULT_TERMINATION_LOG,
            job_name=source.get(JOB_NAME) or None,
            job_namespace=source.get(JOB_NAMESPACE) or None,
            attempt=integer(ATTEMPT, "0"),
            gpus_per_node=integer(GPUS_PER_NODE, "0") if source.get(GPUS_PER_NODE, "").strip() else None,
        )
        if context.node_rank >= context.num_nodes:
            raise ContractError(
                f"{NODE_RANK}={context.node_rank} is out of range for {NUM_NODES}={context.num_nodes}"
            )
        return context
