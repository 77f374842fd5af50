"""The launch builders (torch-free): given a FineTuneJob spec, the DeepSpeed JSON and accelerate launch config."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune.contract import NodeContext
from kubetune.launch import (
    WORKER_MODULE,
    LaunchConfigError,
    accelerate_config,
    accelerate_launch_args,
    deepspeed_config,
)
from kubetune.spec import FineTuneJobSpec, parse_spec


def spec_with(**blocks: Any) -> FineTuneJobSpec:
    document: dict[str, Any] = {
        "model": {"name": "bert-base-uncased"},
        "dataset": {"name": "glue", "config": "mrpc"},
    }
    document.update(blocks)
    return parse_spec(document)


def context(rank: int = 0, nodes: int = 2, procs: int = 2) -> NodeContext:
    return NodeContext(
        job_file="/etc/kubetune/job.yaml",
        node_rank=rank,
        num_nodes=nodes,
        procs_per_node=procs,
        main_addr="job-worker-0.job",
        main_port=29500,
    )


TWO_BY_TWO = {"nodes": 2, "processesPerNode": 2}
TRAINING = {"perDeviceTrainBatchSize": 8, "gradientAccumulationSteps": 4, "maxGradNorm": 0.5}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_batch_sizes_are_explicit_numbers_that_multiply_out(stage: int) -> None:
    config = deepspeed_config(
        spec_with(training=TRAINING, distribution={**TWO_BY_TWO, "deepspeed": {"zeroStage": stage}})
    )
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 4
    assert config["train_batch_size"] == 8 * 4 * 4
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage"] == stage
    assert "auto" not in repr(config)


def test_zero3_gathers_16bit_weights_on_save_and_offloads_when_asked() -> None:
    config = deepspeed_config(
        spec_with(
            distribution={
                "deepspeed": {"zeroStage": 3, "offloadOptimizer": "cpu", "offloadParameters": "cpu"}
            }
        )
    )
    zero = config["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"] == {"device": "cpu"}
    assert zero["offload_param"] == {"device": "cpu"}


def test_zero2_has_no_stage3_keys_and_nvme_offload_names_the_path() -> None:
    config = deepspeed_config(
        spec_with(
            distribution={
                "deepspeed": {"zeroStage": 2, "offloadOptimizer": "nvme", "nvmePath": "/local/nvme"}
            }
        )
    )
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "nvme", "nvme_path": "/local/nvme"}
    assert "offload_param" not in zero
    assert "stage3_gather_16bit_weights_on_model_save" not in zero


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"), [("no", False, False), ("bf16", True, False), ("fp16", False, True)]
)
def test_mixed_precision_sections(precision: str, bf16: bool, fp16: bool) -> None:
    config = deepspeed_config(
        spec_with(training={"mixedPrecision": precision}, distribution={"deepspeed": {"zeroStage": 2}})
    )
    assert config["bf16"]["enabled"] is bf16
    assert config["fp16"]["enabled"] is fp16


def test_no_clipping_is_zero() -> None:
    config = deepspeed_config(
        spec_with(training={"maxGradNorm": None}, distribution={"deepspeed": {"zeroStage": 1}})
    )
    assert config["gradient_clipping"] == 0.0


def test_raw_config_is_deep_merged_and_wins() -> None:
    raw = {
        "zero_optimization": {"stage": 3, "reduce_bucket_size": 1000},
        "bf16": {"enabled": True},
        "extra": 1,
    }
    config = deepspeed_config(spec_with(distribution={"deepspeed": {"zeroStage": 2, "config": raw}}))
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["reduce_bucket_size"] == 1000
    assert config["zero_optimization"]["contiguous_gradients"] is True  # generated keys survive the merge
    assert config["bf16"]["enabled"] is True
    assert config["extra"] == 1


def test_raw_config_alone_enables_deepspeed_at_stage_0() -> None:
    spec = spec_with(distribution={"deepspeed": {"config": {"zero_optimization": {"stage": 1}}}})
    assert deepspeed_config(spec)["zero_optimization"]["stage"] == 1
    assert accelerate_config(spec, context(), "/cfg/ds.json")["distributed_type"] == "DEEPSPEED"


def test_raw_batch_size_that_contradicts_the_spec_is_refused_with_the_field() -> None:
    spec = spec_with(
        training=TRAINING,
        distribution={"deepspeed": {"zeroStage": 2, "config": {"train_micro_batch_size_per_gpu": 2}}},
    )
    with pytest.raises(LaunchConfigError) as error:
        deepspeed_config(spec)
    assert "train_micro_batch_size_per_gpu" in str(error.value)
    assert "training.perDeviceTrainBatchSize" in str(error.value)


def test_raw_values_equal_to_the_spec_are_accepted() -> None:
    spec = spec_with(
        training=TRAINING,
        distribution={"deepspeed": {"zeroStage": 2, "config": {"gradient_accumulation_steps": 4}}},
    )
    assert deepspeed_config(spec)["gradient_accumulation_steps"] == 4


def test_accelerate_config_for_ddp_and_deepspeed() -> None:
    ddp = accelerate_config(spec_with(distribution=TWO_BY_TWO), context(rank=1))
    assert ddp["distributed_type"] == "MULTI_GPU"
    assert (ddp["num_machines"], ddp["num_processes"], ddp["machine_rank"]) == (2, 4, 1)
    assert ddp["main_process_ip"] == "job-worker-0.job"
    assert ddp["use_cpu"] is False
    assert "deepspeed_config" not in ddp

    ds = accelerate_config(
        spec_with(distribution={**TWO_BY_TWO, "deepspeed": {"zeroStage": 3}}), context(), "/c/ds.json"
    )
    assert ds["distributed_type"] == "DEEPSPEED"
    assert ds["deepspeed_config"]["deepspeed_config_file"] == "/c/ds.json"
    assert ds["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"


def test_deepspeed_needs_the_config_path() -> None:
    with pytest.raises(ValueError, match="deepspeed_config_path"):
        accelerate_config(spec_with(distribution={"deepspeed": {"zeroStage": 2}}), context())


def test_launch_args_carry_this_nodes_rank_and_the_worker_module() -> None:
    args = accelerate_launch_args(spec_with(distribution=TWO_BY_TWO), context(rank=1), "/c/accelerate.yaml")
    assert args[0] == "--multi_gpu"
    pairs = dict(zip(args[1:-2:2], args[2:-2:2], strict=True))
    assert pairs["--machine_rank"] == "1"
    assert pairs["--num_machines"] == "2"
    assert pairs["--num_processes"] == "4"
    assert pairs["--main_process_ip"] == "job-worker-0.job"
    assert pairs["--max_restarts"] == "0"
    assert args[-2:] == ["--module", WORKER_MODULE]

    deepspeed = accelerate_launch_args(
        spec_with(distribution={"deepspeed": {"zeroStage": 2}}), context(), "/c/accelerate.yaml"
    )
    assert deepspeed[:3] == ["--use_deepspeed", "--deepspeed_multinode_launcher", "standard"]


def test_one_node_one_process_is_a_plain_single_process_launch() -> None:
    """`accelerate launch --multi_gpu` refuses one process; 1 x 1 without DeepSpeed uses accelerate's simple
    launcher (distributed type NO), as `accelerate config` writes for one GPU. (Run for real in
    tests/runner/test_local_run.py.)"""
    one = context(nodes=1, procs=1)
    spec = spec_with(distribution={"nodes": 1, "processesPerNode": 1})
    assert accelerate_config(spec, one)["distributed_type"] == "NO"
    args = accelerate_launch_args(spec, one, "/c/accelerate.yaml")
    assert "--multi_gpu" not in args and "--use_deepspeed" not in args
    assert args[0] == "--quiet"  # the worker's status file, not accelerate's traceback, tells the outcome
    pairs = dict(zip(args[1:-2:2], args[2:-2:2], strict=True))
    assert pairs["--num_processes"] == "1"
    assert args[-2:] == ["--module", WORKER_MODULE]

    # DeepSpeed launches through torchrun for any world size, 1 included.
    zero = spec_with(distribution={"nodes": 1, "processesPerNode": 1, "deepspeed": {"zeroStage": 2}})
    assert accelerate_config(zero, one, "/c/ds.json")["distributed_type"] == "DEEPSPEED"
    assert accelerate_launch_args(zero, one, "/c/accelerate.yaml")[0] == "--use_deepspeed"
    # One process per node, but two nodes: still a gang (DDP over torchrun).
    assert accelerate_config(spec, context(nodes=2, procs=1))["distributed_type"] == "MULTI_GPU"


def test_torchrun_launches_wait_the_spec_rendezvous_timeout_and_zero2_overlaps_communication() -> None:
    spec = spec_with(distribution={**TWO_BY_TWO, "rendezvousTimeoutSeconds": 3600})
    args = accelerate_launch_args(spec, context(), "/c/accelerate.yaml")
    assert args[args.index("--rdzv_conf") + 1] == "timeout=3600"
    assert args[-2:] == ["--module", WORKER_MODULE]
    single = accelerate_launch_args(spec_with(), context(nodes=1, procs=1), "/c/accelerate.yaml")
    assert "--rdzv_conf" not in single  # one plain process: no rendezvous
    assert spec_with().distribution.rendezvous_timeout_seconds == 1800  # torch's own default is 600

    for stage, overlaps in ((1, None), (2, True), (3, True)):
        zero = deepspeed_config(spec_with(distribution={"deepspeed": {"zeroStage": stage}}))[
            "zero_optimization"
        ]
        assert zero.get("overlap_comm") is overlaps
