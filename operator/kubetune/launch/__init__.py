"""Launch configuration for `kubetune train` (torch-free: the operator renders these into a ConfigMap).

- `deepspeed_config(spec)` — the DeepSpeed JSON for spec.distribution.deepspeed (explicit numbers, no "auto").
- `accelerate_config(spec, context, ...)` — the `accelerate launch` config file (YAML) for one node.
- `accelerate_launch_args(spec, context, config_path)` — the arguments after `accelerate launch` for one node.

Pure functions of the spec and the node context; nothing here touches the file system or imports torch.
"""

from kubetune.launch.accelerate import (
    WORKER_MODULE,
    accelerate_config,
    accelerate_launch_args,
    distributed_type,
)
from kubetune.launch.deepspeed import LaunchConfigError, deep_merge, deepspeed_config

__all__ = [
    "WORKER_MODULE",
    "LaunchConfigError",
    "accelerate_config",
    "accelerate_launch_args",
    "deep_merge",
    "deepspeed_config",
    "distributed_type",
]
