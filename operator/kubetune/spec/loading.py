"""Reading FineTuneJob documents and turning pydantic errors into messages people can act on."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.spec.models import KIND, FineTuneJob, FineTuneJobSpec, unshared_output_problem
from kubetune.spec.storage import hub_token_problem


class _JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but `5e-5` is a float (as for YAML 1.2 and kubectl's go-yaml), not the string
    PyYAML's YAML 1.1 rules make it: the spec's numbers are strict, so a string would be refused here while
    `kubectl apply` accepts the same file."""


_JobLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a FineTuneJob: where, what was given, and how to fix it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SpecError(ValueError):
    """A FineTuneJob that cannot run. `problems` lists every field at fault."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid FineTuneJob{where}:\n{lines}")


def format_location(loc: Iterable[int | str]) -> str:
    """Render a pydantic location as a YAML path: ('spec', 'training', 'metrics', 0) → spec.training.metrics[0]."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for suggesting field names)."""
    current: type[BaseModel] = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)),
            None,
        )
        if field is None:
            return current
        inner = _nested_model(field.annotation)
        if inner is None:
            return current
        current = inner
    return current


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _describe(error: Any, root: type[BaseModel]) -> Problem:
    loc = tuple(error["loc"])
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        known = _field_names(parent) if parent else []
        bad = str(loc[-1])
        close = difflib.get_close_matches(bad, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed fields: {', '.join(known)}"
        return Problem(format_location(loc), f"unknown field '{bad}': {hint}")
    if kind == "missing":
        return Problem(format_location(loc), "required field is missing: add it")
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        # Our own cross-field rules already name the fields and the fix.
        return Problem(format_location(loc), message)
    shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
    return Problem(format_location(loc), f"{message} (got {shown})")


def problems_from_validation_error(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """Every pydantic error of `error` as a Problem naming the YAML field."""
    return [_describe(e, root) for e in error.errors()]


def parse_job(document: dict[str, Any], source: str = "", *, for_cluster: bool = False) -> FineTuneJob:
    """Validate one FineTuneJob document (the dict `yaml.safe_load` gives). `for_cluster` adds the rules that
    only hold on Kubernetes (as the CRD's own rules do at `kubectl apply`): see `cluster_problems`.

    Raises SpecError listing every problem.
    """
    if not isinstance(document, dict):
        raise SpecError([Problem("", "the document is not a mapping: expected a FineTuneJob object")], source)
    if document.get("kind") not in (None, KIND):
        raise SpecError([Problem("kind", f"got '{document.get('kind')}': use kind: {KIND}")], source)
    try:
        job = FineTuneJob.model_validate(document)
    except ValidationError as error:
        raise SpecError(problems_from_validation_error(error, FineTuneJob), source) from None
    problems = [*metadata_problems(job), *cluster_problems(job.spec)] if for_cluster else []
    if problems:
        raise SpecError(problems, source)
    return job


def metadata_problems(job: FineTuneJob) -> list[Problem]:
    """What the API server refuses in a job's metadata that a local run does not need: a job without a name
    (`kubetune run` calls it finetune) nor a generateName."""
    if "name" in job.metadata.model_fields_set or job.metadata.generate_name:
        return []
    return [
        Problem(
            "metadata.name",
            "required field is missing: name the job (metadata.name: my-job), or set metadata.generateName: "
            "my-job- for a generated name",
        )
    ]


def cluster_problems(spec: FineTuneJobSpec) -> list[Problem]:
    """What a valid spec cannot do on Kubernetes, where every node has a disk of its own (the local runner's
    nodes share one machine's, and the user's environment): a multi-node output on no shared volume, and a hub
    push with no token Secret."""
    problem = unshared_output_problem(spec)
    problems = [Problem("spec.output.path", problem)] if problem else []
    hub_problem = hub_token_problem(spec)
    if hub_problem:
        problems.append(Problem("spec.output.hub.tokenSecret", hub_problem))
    return problems


def parse_spec(spec: dict[str, Any], source: str = "") -> FineTuneJobSpec:
    """Validate a bare `spec` mapping (what the operator reads from the resource).

    Raises SpecError with fields prefixed by `spec.`.
    """
    try:
        return FineTuneJobSpec.model_validate(spec)
    except ValidationError as error:
        problems = [
            Problem(f"spec.{p.field}" if p.field else "spec", p.message)
            for p in problems_from_validation_error(error, FineTuneJobSpec)
        ]
        raise SpecError(problems, source) from None


def load_jobs(path: str | Path, *, for_cluster: bool = False) -> list[FineTuneJob]:
    """Every FineTuneJob in a YAML file (other kinds in a multi-document file are skipped); `for_cluster` as
    for `parse_job`.

    Raises SpecError when the file cannot be read, is not YAML, holds no FineTuneJob, or a job is invalid.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError([Problem("", f"cannot read the file: {error.strerror}")], source) from None
    try:
        documents = [d for d in yaml.load_all(text, Loader=_JobLoader) if d is not None]
    except yaml.YAMLError as error:
        raise SpecError([Problem("", f"not valid YAML: {error}")], source) from None
    jobs_docs = [d for d in documents if not isinstance(d, dict) or d.get("kind", KIND) == KIND]
    if not jobs_docs:
        raise SpecError([Problem("kind", f"no {KIND} document found in the file")], source)
    jobs: list[FineTuneJob] = []
    problems: list[Problem] = []
    for index, document in enumerate(jobs_docs):
        try:
            jobs.append(parse_job(document, source, for_cluster=for_cluster))
        except SpecError as error:
            prefix = f"document {index + 1}: " if len(jobs_docs) > 1 else ""
            problems.extend(Problem(prefix + p.field, p.message) for p in error.problems)
    if problems:
        raise SpecError(problems, source)
    return jobs


def load_job(path: str | Path) -> FineTuneJob:
    """The single FineTuneJob in a YAML file. Raises SpecError if there is not exactly one, or it is invalid."""
    jobs = load_jobs(path)
    if len(jobs) != 1:
        raise SpecError([Problem("", f"expected one {KIND} in the file, found {len(jobs)}")], str(path))
    return jobs[0]


# libyaml's emitter (shipped in PyYAML's wheels) when present: the pure-Python one took a sixth of the
# operator's CPU during a burst of new jobs, each of which gets its spec written into a ConfigMap.
_SafeDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(data: Any, sort_keys: bool = False) -> str:
    """`data` (plain dicts, lists and scalars) as a YAML document."""
    return str(yaml.dump(data, Dumper=_SafeDumper, sort_keys=sort_keys))


def dump_job(job: FineTuneJob) -> str:
    """The job as YAML with camelCase keys and every default filled in (what workers read).

    Nulls are kept: `evalSplit: null` means "no evaluation", and dropping it would bring back the default.
    """
    data = job.model_dump(mode="json", by_alias=True, exclude={"status"})
    return to_yaml(data)
