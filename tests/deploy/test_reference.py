"""docs/reference.md is the reference `kubetune docs` renders from the models, and covers every field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kubetune.reference import REFERENCE_FILE, render_reference, sections
from kubetune.spec.models import FineTuneJobSpec
from kubetune.spec.status import FineTuneJobStatus
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_reference_is_what_kubetune_docs_renders() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "docs", "--output", REFERENCE_FILE, "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _fields(path: str, model: type[BaseModel]) -> list[tuple[str, str, str]]:
    return [
        (section.path, field.alias or name, field.description or "")
        for section in sections(path, model)
        for name, field in section.model.model_fields.items()
    ]


def test_every_spec_and_status_field_is_documented_with_its_description() -> None:
    """Each field appears in its section's table with the description written on the model."""
    reference = render_reference()
    for path, key, description in _fields("spec", FineTuneJobSpec) + _fields("status", FineTuneJobStatus):
        assert description, f"{path}.{key} has no description on its pydantic field"
        section = reference.split(f"### `{path}`\n", 1)[1].split("\n### ", 1)[0]
        row = next((line for line in section.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{path}.{key} is missing from the reference"
        expected = description.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        assert row.endswith(f"| {expected} |"), row


def test_links_between_sections_resolve() -> None:
    reference = render_reference()
    anchors = {s.anchor for path, model in (("spec", FineTuneJobSpec),) for s in sections(path, model)}
    anchors |= {s.anchor for s in sections("status", FineTuneJobStatus)} | {"metadata"}
    for anchor in re.findall(r"\]\(#([a-z0-9]+)\)", reference):
        assert anchor in anchors, f"link to #{anchor} has no section"
