"""Given a model whose parameters DeepSpeed ZeRO-3 has partitioned, the weights hash that the distributed tests
compare across ranks (KUBETUNE_DEBUG_WEIGHTS_HASH) is the hash of the whole weights, whatever made the stage 3:
spec.distribution.deepspeed.zeroStage or a raw deepspeed.config (its keys win over the spec's).

Real DeepSpeed (zero.Init, CPU accelerator) in a child process with a one-process gloo group on loopback: a rank's
partitioned parameters are empty in its state dict, so a hash that does not gather them hashes nothing but the
names, and every rank agrees whatever the weights are.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube.processes import free_loopback_port

pytestmark = pytest.mark.timeout(300)

CHILD = r"""
import hashlib, os, sys
import torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
import deepspeed
from kubetune_trainer.loop import weights_digest

torch.manual_seed(0)
plain = torch.nn.Linear(16, 4)
torch.manual_seed(0)
with deepspeed.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 3}, "train_batch_size": 1}):
    partitioned = torch.nn.Linear(16, 4)
shards = {name: tuple(t.shape) for name, t in partitioned.state_dict().items()}
names_only = hashlib.sha256()
for name, tensor in sorted(partitioned.state_dict().items()):
    names_only.update(name.encode())
    names_only.update(tensor.detach().float().cpu().numpy().tobytes())
print("shards", shards)
print("plain", weights_digest(plain))
print("partitioned", weights_digest(partitioned))
print("ungathered", names_only.hexdigest())
dist.destroy_process_group()
"""


def test_the_weights_of_a_zero3_model_are_gathered_before_they_are_hashed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(free_loopback_port())],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    said = dict(
        line.split(" ", 1)
        for line in done.stdout.splitlines()
        if line.split(" ", 1)[0] in {"shards", "plain", "partitioned", "ungathered"}
    )
    assert said["shards"] == "{'weight': (0,), 'bias': (0,)}", said  # ZeRO-3 really partitioned them
    assert said["partitioned"] == said["plain"], "the hash of the gathered weights is the whole model's"
    assert said["ungathered"] != said["plain"], said
