"""Given a job that cannot work, `kubetune train` says what to fix, exits non-zero, and writes no output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from kubetune.contract import EXIT_INVALID_SPEC
from kubetune_trainer import node_launcher

from tests.trainer.helpers import (
    Assets,
    child_env,
    explain,
    make_job,
    run_single,
    start_nodes,
    train_in_process,
    wait_nodes,
)

pytestmark = pytest.mark.timeout(300)


def launch_in_process(job: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`kubetune train` up to validation, in this process (spec errors stop before any training import)."""
    code = node_launcher.main(job_file=str(job), env={})
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"distribution": {"deepspeed": {"zeroStage": 4}}}, ["spec.distribution.deepspeed.zeroStage", "4"]),
        (
            {"training": {"epochs": "many", "perDeviceTrainBatchSize": "big"}},
            ["spec.training.epochs", "'many'", "spec.training.perDeviceTrainBatchSize", "'big'"],
        ),
        ({"training": {"learnignRate": 0.1}}, ["learnignRate", "did you mean 'learningRate'"]),
        (
            {
                "training": {"perDeviceTrainBatchSize": 8},
                "distribution": {
                    "deepspeed": {"zeroStage": 2, "config": {"train_micro_batch_size_per_gpu": 4}}
                },
            },
            ["train_micro_batch_size_per_gpu", "training.perDeviceTrainBatchSize"],
        ),
    ],
    ids=["zero-stage-4", "wrong-types", "misspelt-field", "raw-deepspeed-contradicts-spec"],
)
def test_invalid_job_is_refused_before_anything_runs(
    tmp_path: Path,
    assets: Assets,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, object],
    expected: list[str],
) -> None:
    job = make_job(tmp_path, assets, **overrides)  # type: ignore[arg-type]
    code, stderr = launch_in_process(job, capsys)
    assert code == EXIT_INVALID_SPEC
    for fragment in expected:
        assert fragment in stderr, stderr
    assert not (tmp_path / "job-out").exists()


def test_missing_text_column_names_the_field_and_lists_the_columns(tmp_path: Path, assets: Assets) -> None:
    job = make_job(tmp_path, assets, dataset={"textFields": ["review"]})
    result = run_single(job, child_env(tmp_path))
    assert result.returncode == EXIT_INVALID_SPEC, explain(result)
    assert "spec.dataset.textFields" in result.stderr and "'review'" in result.stderr
    assert "['text', 'label']" in result.stderr
    assert not (tmp_path / "job-out").exists(), "nothing half-written"
    assert '"event":"failed"' in result.stdout


def test_missing_label_column_names_the_field() -> None:
    import datasets
    from kubetune.spec.models import DatasetSpec
    from kubetune_trainer.data import DataError, check_columns

    data = datasets.Dataset.from_dict({"text": ["good"], "label": [1]})
    spec = DatasetSpec.model_validate({"files": {"train": "t.jsonl"}, "labelField": "sentiment"})
    with pytest.raises(DataError) as error:
        check_columns(data, spec, "sequence-classification", "train")
    assert "spec.dataset.labelField is 'sentiment'" in str(error.value) and "['text', 'label']" in str(
        error.value
    )


def test_pinned_weights_hash_mismatch_refuses_to_train(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    actual = hashlib.sha256((assets.model / "model.safetensors").read_bytes()).hexdigest()
    wrong = "0" * 64
    result = train_in_process(make_job(tmp_path, assets, model={"weightsSha256": wrong}), in_process_env)
    assert result.returncode == EXIT_INVALID_SPEC, explain(result)
    assert "spec.model.weightsSha256" in result.stderr and actual in result.stderr
    assert not (tmp_path / "job-out").exists()

    good = train_in_process(
        make_job(tmp_path, assets, "pinned", model={"weightsSha256": actual}, training={"maxSteps": 2}),
        in_process_env,
    )
    assert good.returncode == 0, explain(good)


def test_a_rank_that_fails_ends_the_gang_and_its_error_is_shown(tmp_path: Path, assets: Assets) -> None:
    """Node 1 reads a job file whose train file does not exist; node 0 a good one. Node 0 must not hang."""
    good = make_job(tmp_path, assets, "good", distribution={"nodes": 2})
    bad = make_job(
        tmp_path,
        assets,
        "bad",
        distribution={"nodes": 2},
        dataset={"files": {"train": "/nowhere/train.jsonl"}},
    )
    nodes = start_nodes(good, child_env(tmp_path), nodes=2, per_node_jobs={1: bad})
    results = wait_nodes(nodes, timeout=120)
    assert results[1].returncode == EXIT_INVALID_SPEC, explain(results)
    assert "spec.dataset.files.train is '/nowhere/train.jsonl': no such file" in results[1].stderr
    assert results[0].returncode != 0, explain(results)
    assert "rank 0 failed" in results[0].stderr or "exited with code" in results[0].stderr, explain(results)
