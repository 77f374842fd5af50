"""Given a FineTuneJob file, `kubetune validate` and the spec models accept it or name every problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune.contract import ContractError, NodeContext
from kubetune.spec import FineTuneJob, SpecError, dump_job, load_job, load_jobs, parse_job, parse_spec
from kubetune.spec.models import Metric, Task

REPO = Path(__file__).resolve().parents[2]


def job(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "bert-base-uncased"},
        "dataset": {"name": "glue", "config": "mrpc", "textFields": ["sentence1", "sentence2"]},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "t"},
        "spec": spec,
    }


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_job(document)
    return [str(p) for p in caught.value.problems]


def test_minimal_job_gets_documented_defaults() -> None:
    parsed = parse_job(job())
    assert parsed.spec.model.task == Task.SEQUENCE_CLASSIFICATION
    assert parsed.spec.training.learning_rate == 2e-5
    assert parsed.spec.distribution.nodes == 1
    assert parsed.spec.distribution.deepspeed.zero_stage == 0
    assert parsed.spec.checkpointing.keep_last == 2
    assert parsed.spec.primary_metric == Metric.ACCURACY


def test_dump_is_camel_case_and_round_trips() -> None:
    parsed = parse_job(job(training={"perDeviceTrainBatchSize": 8, "mixedPrecision": "bf16"}))
    text = dump_job(parsed)
    assert "perDeviceTrainBatchSize: 8" in text
    assert "per_device" not in text
    assert parse_job(yaml.safe_load(text)) == parsed


def test_dump_keeps_explicit_nulls_that_override_defaults() -> None:
    parsed = parse_job(job(dataset={"name": "glue", "evalSplit": None}, training={"maxGradNorm": None}))
    again = parse_job(yaml.safe_load(dump_job(parsed)))
    assert again.spec.dataset.eval_split is None
    assert again.spec.training.max_grad_norm is None


def test_unknown_field_suggests_the_right_name() -> None:
    found = problems(job(training={"learningrate": 1e-4}))
    assert found == ["spec.training.learningrate: unknown field 'learningrate': did you mean 'learningRate'?"]


def test_wrong_types_and_bounds_name_field_and_value() -> None:
    found = problems(job(training={"epochs": "three", "learningRate": -1}))
    assert any(p.startswith("spec.training.epochs:") and "'three'" in p for p in found)
    assert any(p.startswith("spec.training.learningRate:") and "greater than 0" in p for p in found)


def test_invalid_zero_stage_lists_the_allowed_ones() -> None:
    (found,) = problems(job(distribution={"deepspeed": {"zeroStage": 4}}))
    assert found.startswith("spec.distribution.deepspeed.zeroStage:")
    assert "0, 1, 2 or 3" in found and "(got 4)" in found


def test_offload_without_deepspeed_says_how_to_fix() -> None:
    (found,) = problems(job(distribution={"deepspeed": {"offloadOptimizer": "cpu"}}))
    assert "zeroStage is 0" in found and "set zeroStage to 1, 2 or 3" in found


def test_parameter_offload_needs_zero_3() -> None:
    (found,) = problems(job(distribution={"deepspeed": {"zeroStage": 2, "offloadParameters": "cpu"}}))
    assert "needs zeroStage 3" in found


def test_classification_needs_a_label_field() -> None:
    (found,) = problems(job(dataset={"name": "glue", "labelField": None}))
    assert "dataset.labelField is unset" in found


def test_metrics_must_fit_the_task() -> None:
    (found,) = problems(job(model={"name": "gpt2", "task": "causal-lm"}, training={"metrics": ["f1"]}))
    assert "do not apply to task causal-lm" in found and "perplexity" in found


def test_prompt_and_completion_come_together_and_only_for_causal_lm() -> None:
    causal = {"model": {"name": "gpt2", "task": "causal-lm"}, "training": {"metrics": ["perplexity"]}}
    pair = {"name": "alpaca", "labelField": None, "promptField": "instruction", "completionField": "output"}
    parsed = parse_job(job(**causal, dataset=pair))
    assert (parsed.spec.dataset.prompt_field, parsed.spec.dataset.completion_field) == (
        "instruction",
        "output",
    )
    (found,) = problems(job(**causal, dataset={"name": "alpaca", "promptField": "instruction"}))
    assert "dataset.completionField is unset" in found and "promptField" in found
    (found,) = problems(job(dataset={"name": "glue", "promptField": "a", "completionField": "b"}))
    assert "dataset.promptField is 'a'" in found and "causal-lm only" in found


def test_dataset_needs_exactly_one_source() -> None:
    assert any("not both" in p for p in problems(job(dataset={"name": "glue", "files": {"train": "a.csv"}})))
    assert any("dataset.files.train" in p for p in problems(job(dataset={"textFields": ["a"]})))


def test_steps_evaluation_needs_eval_steps() -> None:
    (found,) = problems(job(training={"evalStrategy": "steps"}))
    assert "set evalSteps" in found


def test_wrong_api_version_and_kind() -> None:
    document = job()
    document["apiVersion"] = "kubetune.io/v1"
    assert any("use apiVersion: kubetune.io/v1alpha1" in p for p in problems(document))
    document = job()
    document["kind"] = "Deployment"
    assert problems(document) == ["kind: got 'Deployment': use kind: FineTuneJob"]


def test_weights_sha256_must_be_hex() -> None:
    (found,) = problems(job(model={"name": "m", "weightsSha256": "abc"}))
    assert found.startswith("spec.model.weightsSha256:")


def test_bare_spec_errors_are_prefixed_with_spec() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"model": {"name": "m"}, "dataset": {"name": "d"}, "training": {"seed": -1}})
    assert str(caught.value.problems[0]).startswith("spec.training.seed:")


def test_cli_validate_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(job(training={"epochs": 0}, distribution={"deepspeed": {"zeroStage": 7}})))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(job()))
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "validate", str(good), str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "FineTuneJob t is valid" in result.stdout
    assert (
        "spec.training.epochs" in result.stderr and "spec.distribution.deepspeed.zeroStage" in result.stderr
    )
    assert str(bad) in result.stderr


def test_cli_validate_rejects_non_yaml_and_missing_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    for path in (broken, tmp_path / "missing.yaml"):
        result = subprocess.run(
            [sys.executable, "-m", "kubetune.cli", "validate", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2, result.stderr
    assert "not valid YAML" in result.stderr or "cannot read" in result.stderr


def test_multi_document_file_skips_other_kinds(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf"}}
    path.write_text(yaml.safe_dump_all([secret, job()]))
    assert isinstance(load_job(path), FineTuneJob)


@pytest.mark.parametrize(
    "example", sorted((REPO / "manifests" / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_is_valid(example: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "validate", str(example)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_contract_round_trips_and_names_bad_variables() -> None:
    context = NodeContext(
        job_file="/etc/kubetune/job.yaml",
        node_rank=1,
        num_nodes=2,
        procs_per_node=4,
        main_addr="job-0.job",
        main_port=29500,
        job_name="t",
        job_namespace="ns",
    )
    assert NodeContext.from_env(context.to_env()) == context
    assert context.world_size == 8
    with pytest.raises(ContractError, match="KUBETUNE_JOB_FILE is not set"):
        NodeContext.from_env({})
    env = context.to_env() | {"KUBETUNE_NODE_RANK": "2"}
    with pytest.raises(ContractError, match="out of range"):
        NodeContext.from_env(env)
    with pytest.raises(ContractError, match="not a whole number"):
        NodeContext.from_env(context.to_env() | {"KUBETUNE_MAIN_PORT": "http"})


def test_exponent_floats_without_a_dot_are_numbers_as_for_kubectl(tmp_path: Path) -> None:
    """PyYAML reads `5e-5` as a string (YAML 1.1); kubectl reads a number. The strict spec must see a number."""
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: lr}\n"
        "spec:\n  model: {name: m}\n  dataset: {name: glue}\n  training: {learningRate: 5e-5, adamEpsilon: 1E-8}\n"
    )
    job = load_jobs(path)[0]
    assert job.spec.training.learning_rate == 5e-5 and job.spec.training.adam_epsilon == 1e-8
