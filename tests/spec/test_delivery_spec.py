"""Issue 13's spec blocks: output.objectStorage, output.hub and tracking. Every problem names the field, the bad
value and the fix; a multi-node job writing its checkpoints to a bucket needs no shared volume."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune.spec import SpecError, parse_job

from tests.spec.test_spec import job


def problems(document: dict[str, Any], for_cluster: bool = False) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_job(document, for_cluster=for_cluster)
    return [str(p) for p in caught.value.problems]


def test_object_storage_is_parsed_with_its_defaults() -> None:
    spec = parse_job(job(output={"objectStorage": {"uri": "s3://models/runs/bert/"}})).spec
    storage = spec.output.object_storage
    assert storage is not None
    assert (storage.bucket, storage.prefix, storage.region, storage.checkpoints) == (
        "models",
        "runs/bert",
        "us-east-1",
        True,
    )
    assert storage.location("model") == "s3://models/runs/bert/model"
    assert spec.tracking.mlflow is None and spec.tracking.wandb is None


@pytest.mark.parametrize(
    ("block", "field", "hint"),
    [
        (
            {"objectStorage": {"uri": "gs://models/x"}},
            "spec.output.objectStorage.uri",
            "use s3://<bucket>/<prefix>",
        ),
        ({"objectStorage": {"uri": "s3://Models/x"}}, "spec.output.objectStorage.uri", "lowercase"),
        (
            {"objectStorage": {"uri": "s3://models/x", "endpoint": "minio:9000"}},
            "spec.output.objectStorage.endpoint",
            "http://minio.storage:9000",
        ),
        (
            {"objectStorage": {"uri": "s3://models/x", "credentialsSecret": {}}},
            "spec.output.objectStorage.credentialsSecret.name",
            "required",
        ),
        ({"hub": {"repoId": "just-a-name"}}, "spec.output.hub.repoId", "<owner>/<name>"),
    ],
)
def test_output_problems_name_the_field_and_the_fix(block: dict[str, Any], field: str, hint: str) -> None:
    [problem] = problems(job(output=block))
    assert problem.startswith(field) and hint in problem, problem


def test_tracking_problems_name_the_field_and_the_fix() -> None:
    found = problems(job(tracking={"mlflow": {"trackingUri": "file:/tmp/mlruns"}, "wandb": {"project": "p"}}))
    assert any(
        p.startswith("spec.tracking.mlflow.trackingUri") and "http://mlflow.mlops:5000" in p for p in found
    )
    assert any(p.startswith("spec.tracking.wandb.apiKeySecret") for p in found), found


def test_a_multi_node_job_with_checkpoints_in_a_bucket_needs_no_shared_volume_on_a_cluster() -> None:
    bucket = {"distribution": {"nodes": 2}, "output": {"objectStorage": {"uri": "s3://models/x"}}}
    parse_job(job(**bucket), for_cluster=True)
    model_only = {
        "distribution": {"nodes": 2},
        "output": {"objectStorage": {"uri": "s3://models/x", "checkpoints": False}},
    }
    [problem] = problems(job(**model_only), for_cluster=True)
    assert problem.startswith("spec.output.path") and "output.objectStorage" in problem


def test_a_hub_push_on_a_cluster_needs_a_token_secret() -> None:
    [problem] = problems(job(output={"hub": {"repoId": "org/model"}}), for_cluster=True)
    assert problem.startswith("spec.output.hub.tokenSecret") and "kubernetes.hfTokenSecret" in problem
    parse_job(
        job(output={"hub": {"repoId": "org/model"}}, kubernetes={"hfTokenSecret": {"name": "hf"}}),
        for_cluster=True,
    )
    parse_job(
        job(output={"hub": {"repoId": "org/model"}})
    )  # kubetune run: the token comes from the environment
