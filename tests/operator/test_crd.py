"""The FineTuneJob CRD is generated from the pydantic models: the committed manifest is up to date, the
schema is structural with the models' defaults, enums, bounds and descriptions, and every cross-field
validator of the models has a CEL twin (the cluster tests check the API server applies them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune.cli import main
from kubetune.crd import CEL_RULES, PRINTER_COLUMNS, build_crd, render_crd
from kubetune.spec.models import FineTuneJobSpec, RunPolicy, SpecModel, TrainingSpec
from kubetune.spec.pod_fields import PREFIX_RULE

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "manifests" / "crd" / "finetunejobs.kubetune.io.yaml"


def schema() -> dict[str, Any]:
    crd = build_crd()
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def spec_schema() -> dict[str, Any]:
    result: dict[str, Any] = schema()["properties"]["spec"]
    return result


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found.extend(walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            found.extend(walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            found.extend(walk(node["additionalProperties"], f"{path}{{}}"))
    return found


def test_the_committed_crd_is_what_kubetune_crd_generates() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render_crd(), (
        "manifests/crd/finetunejobs.kubetune.io.yaml is stale: run `kubetune crd -o manifests/crd/`"
    )


def test_kubetune_crd_check_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "crd.yaml"
    assert main(["crd", "-o", str(target)]) == 0
    assert main(["crd", "-o", str(target), "--check"]) == 0
    target.write_text("stale", encoding="utf-8")
    assert main(["crd", "-o", str(target), "--check"]) == 1
    assert "stale" in capsys.readouterr().err


def test_the_schema_is_structural() -> None:
    banned = {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"}
    for path, node in walk(schema()):
        assert not banned & set(node), f"{path} has {banned & set(node)}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if node.get("type") == "object":
            assert node.get("additionalProperties") is not False, path
            assert "properties" not in node or "additionalProperties" not in node, path
    assert yaml.safe_load(render_crd()) == build_crd()


def test_defaults_enums_bounds_and_descriptions_come_from_the_models() -> None:
    spec = spec_schema()["properties"]
    training = spec["training"]
    assert training["default"] == TrainingSpec().model_dump(mode="json", by_alias=True, exclude_none=True)
    learning_rate = training["properties"]["learningRate"]
    assert learning_rate["type"] == "number" and learning_rate["default"] == 2e-05
    assert (learning_rate["minimum"], learning_rate["exclusiveMinimum"], learning_rate["maximum"]) == (
        0,
        True,
        1,
    )
    assert learning_rate["description"] == TrainingSpec.model_fields["learning_rate"].description
    assert training["properties"]["metrics"]["items"]["enum"] == [
        "accuracy",
        "f1",
        "precision",
        "recall",
        "perplexity",
    ]
    assert training["properties"]["metrics"]["default"] == ["accuracy"]
    nodes = spec["distribution"]["properties"]["nodes"]
    assert (nodes["minimum"], nodes["maximum"], nodes["default"]) == (1, 1024, 1)
    assert spec["distribution"]["properties"]["deepspeed"]["properties"]["zeroStage"]["enum"] == [0, 1, 2, 3]
    assert spec["runPolicy"]["default"] == RunPolicy().model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert spec_schema()["required"] == ["model", "dataset"]
    # null that means "disable" survives (a pruned null would bring the default back)
    assert spec["dataset"]["properties"]["evalSplit"]["nullable"] is True
    assert spec["training"]["properties"]["maxGradNorm"]["nullable"] is True
    assert "nullable" not in spec["model"]["properties"]["numLabels"]
    # free-form blocks are kept as written
    assert spec["distribution"]["properties"]["deepspeed"]["properties"]["config"][
        "x-kubernetes-preserve-unknown-fields"
    ]
    # what goes onto the pods is typed, so the API server checks it (issue 11)
    affinity = spec["kubernetes"]["properties"]["affinity"]
    assert "x-kubernetes-preserve-unknown-fields" not in affinity
    assert set(affinity["properties"]) == {"nodeAffinity", "podAffinity", "podAntiAffinity"}
    source = spec["kubernetes"]["properties"]["podOverlay"]["properties"]["volumes"]["items"]["properties"]
    assert "x-kubernetes-preserve-unknown-fields" not in source["source"]
    for path, node in walk(spec_schema()):
        if path.count(".") == 1:
            assert node.get("description"), f"spec{path} has no description"


def test_every_cross_field_validator_has_a_cel_rule() -> None:
    validated = {
        cls
        for cls in [FineTuneJobSpec, *{c for c in CEL_RULES}]
        if any(
            name.startswith("_") and name not in SpecModel.__pydantic_decorators__.model_validators
            for name in cls.__pydantic_decorators__.model_validators
        )
    }
    assert validated <= set(CEL_RULES), (
        f"models with validators but no CEL rule: {validated - set(CEL_RULES)}"
    )
    # Every model's rules are on its schema (a model used in several places, e.g. LabelSelector, has them at
    # each), and the only other rules are the field rules of pod_fields.
    found = [rule for _, n in walk(spec_schema()) for rule in n.get("x-kubernetes-validations", [])]
    expected = [rule for rules in CEL_RULES.values() for rule in rules] + [PREFIX_RULE]
    assert all(rule in found for rule in expected)
    assert all(rule in expected for rule in found)


def test_the_spec_is_locked_while_running_except_suspend_and_ttl() -> None:
    (name_rule, transition) = schema()["x-kubernetes-validations"]
    assert "oldSelf" in transition["rule"] and "suspend" not in transition["rule"]
    assert "ttlSecondsAfterFinished" not in transition["rule"]
    assert "self.spec.model == oldSelf.spec.model" in transition["rule"]
    assert "metadata.name" in name_rule["rule"]


def test_status_subresource_and_printer_columns() -> None:
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Model", "Nodes", "Progress", "Metric", "Restarts", "Age"]
    assert version["additionalPrinterColumns"] == PRINTER_COLUMNS
    names = build_crd()["spec"]["names"]
    assert (names["plural"], names["shortNames"]) == ("finetunejobs", ["ftj"])
