"""docs/troubleshooting.md and docs/deploy.md point at status and spec fields, reasons and files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kubetune.reference import sections
from kubetune.spec.models import FineTuneJobSpec
from kubetune.spec.status import FailureReason, FineTuneJobStatus
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "docs" / "troubleshooting.md", REPO / "docs" / "deploy.md"]


def _paths(root: str, model: type[BaseModel]) -> set[str]:
    """Every dotted field path under `root` (e.g. status.lastFailure.reason), list markers dropped."""
    found = set()
    for section in sections(root, model):
        for name, field in section.model.model_fields.items():
            found.add(f"{section.path.replace('[]', '')}.{field.alias or name}")
    return found


STATUS_PATHS = _paths("status", FineTuneJobStatus)
SPEC_PATHS = {p.removeprefix("spec.") for p in _paths("spec", FineTuneJobSpec)}


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_status_field_named_exists(doc: Path) -> None:
    for path in set(re.findall(r"`(status(?:\.[a-zA-Z]+)+)`", doc.read_text())):
        assert path in STATUS_PATHS, f"{doc.name} names {path}, which the status does not have"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_spec_field_named_exists(doc: Path) -> None:
    """Spec fields are written without the leading `spec.` (e.g. `kubernetes.resources.memory`)."""
    roots = {p.split(".")[0] for p in SPEC_PATHS}
    for path in set(re.findall(r"`((?:spec\.)?[a-z][a-zA-Z]+(?:\.[a-zA-Z]+)+)`", doc.read_text())):
        path = path.removeprefix("spec.")
        if path.split(".")[0] in roots:
            assert path in SPEC_PATHS, f"{doc.name} names {path}, which the spec does not have"


def test_every_failure_reason_the_operator_reports_is_explained() -> None:
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    missing = [r.value for r in FailureReason if f"`{r.value}`" not in text and r.value != "PodDeleted"]
    assert not missing, f"docs/troubleshooting.md does not explain {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_files_the_docs_point_at_exist(doc: Path) -> None:
    for relative in set(re.findall(r"((?:manifests|charts)/[\w./-]+\.(?:ya?ml|md))", doc.read_text())):
        assert (REPO / relative).exists() or relative.endswith("offline.yaml"), f"{doc.name}: {relative}"
