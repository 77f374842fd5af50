"""A property-based fuzz of hostile FineTuneJobs (issue 11): 5,000 generated documents, valid and broken,
each sent through `kubetune validate`'s parser, the real API server (server-side dry-run create against the
generated CRD: its OpenAPI schema and CEL rules) and, when accepted, the operator's pure planner.

How the documents are made: a strategy walks the CRD's spec schema (which `kubetune.crd` generates from the
pydantic models) and draws values within its types, enums, patterns and bounds, so new fields are fuzzed as
soon as they exist. Half of the documents are then broken by one mutation at a field of that schema: a wrong
JSON type, a number out of range, an unknown field, a missing required field, a hostile string (very long,
unicode, YAML specials), a huge list, a null, a non-finite number.

Properties:
- no crash and no hang: the parser raises only SpecError, the planner never raises, each step of an example
  runs under a time bound (an alarm for the pure code, a request timeout for the API server);
- every rejection names a field: each problem `validate` lists has a field path that starts with `spec`,
  `metadata`, `kind` or `apiVersion`; the API server's answer names a `spec...`/`metadata...` path in its
  causes or message. When the mutation is local to one field (all kinds except a hostile string, which
  may be valid), both name a path related to the mutated one: equal, or one a prefix of the other, after
  dropping list indices (`spec.training.metrics[0]` ~ `spec.training.metrics`);
- agreement: the API server accepts a document exactly when `validate` does. A non-finite number cannot be
  sent as JSON at all, so `validate` must refuse it;
- what both accept, the planner turns (from the API server's defaulted object, as the operator reads it)
  into a Pending job with its children and worker pods built (Suspended, with none, under runPolicy.suspend),
  or a Failed one whose message names a field.

Reproducible in CI: derandomize=True (a fixed sequence of examples), no example database. The counts are
printed at the end (`-s` shows them).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import urllib3
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.controller.children import JobRef, WorkerContext, build_job_children, build_worker_pod
from kubetune.controller.plan import ObservedJob, plan
from kubetune.crd import build_crd
from kubetune.spec.loading import SpecError, parse_job
from kubetune.spec.models import API_GROUP, API_VERSION, KIND, PLURAL
from kubetune.spec.status import FineTuneJobStatus
from kubetune.spec.status import Phase as JobPhase

from tests.operator.factories import T0

pytestmark = pytest.mark.cluster

EXAMPLES = int(os.environ.get("KUBETUNE_FUZZ_EXAMPLES", "5000"))  # fewer only while debugging
STEP_SECONDS = 20  # bound on one step (parse, plan) of one example: a hang fails the example, not CI (20: a
# 20,000-item document takes seconds on a loaded 2-core machine)
REQUEST_SECONDS = 30  # far above a dry-run's milliseconds, even on a loaded CI machine
API_THREADS = 4
SPEC_SCHEMA: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
    "spec"
]
INT64 = 2**63 - 1

# --- valid documents, drawn from the schema ----------------------------------------------------------------

# (codec utf-8: no lone surrogates, which no JSON document can carry)
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


def _few(keys: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(keys), unique=True, max_size=min(3, len(keys))) if keys else st.just([])


_STRATEGIES: dict[int, st.SearchStrategy[Any]] = {}  # by id() of a node of SPEC_SCHEMA (built once: fast)
_OBJECTS: dict[tuple[int, tuple[str, ...]], st.SearchStrategy[Any]] = {}


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema's types, enums, patterns and bounds allow (cross-field rules are not followed)."""
    if id(schema) not in _STRATEGIES:
        base = _from_schema(schema)
        _STRATEGIES[id(schema)] = st.one_of(st.none(), base) if schema.get("nullable") else base
    return _STRATEGIES[id(schema)]


def _object(schema: dict[str, Any], keys: tuple[str, ...]) -> st.SearchStrategy[Any]:
    if (id(schema), keys) not in _OBJECTS:
        properties = schema["properties"]
        _OBJECTS[id(schema), keys] = st.fixed_dictionaries({k: from_schema(properties[k]) for k in keys})
    return _OBJECTS[id(schema), keys]


def _from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties") or {}
        if properties:
            required = list(schema.get("required") or [])
            optional = [k for k in properties if k not in required]
            return _few(optional).flatmap(lambda chosen: _object(schema, (*required, *chosen)))
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            # (a few entries: the bounds of maps, up to 512, are fuzzed by test_metadata_fuzz)
            return st.dictionaries(
                _TEXT, from_schema(values), max_size=min(schema.get("maxProperties", 3), 3)
            )
        scalars = st.one_of(st.integers(-100, 100), st.booleans(), _TEXT, st.none())
        return st.dictionaries(_TEXT.filter(bool), scalars, max_size=3)
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(
            from_schema(schema["items"]),
            min_size=low,
            max_size=max(low, min(3, schema.get("maxItems", 3))),
        )
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        low = schema.get("minLength", 0)
        return st.text(
            st.characters(codec="utf-8"),
            min_size=low,
            max_size=min(schema.get("maxLength", 24), 24),
        )
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(
            schema.get("minimum", -1e9),
            schema.get("maximum", 1e9),
            exclude_min=bool(schema.get("exclusiveMinimum")),
            exclude_max=bool(schema.get("exclusiveMaximum")),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"the fuzz does not know schema type {kind!r}: teach _from_schema")


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec the schema allows, with one data source (the most common cross-field rule) chosen."""
    spec: dict[str, Any] = draw(from_schema(SPEC_SCHEMA))
    dataset = spec["dataset"]
    if dataset.get("name") and dataset.get("files"):
        del dataset[draw(st.sampled_from(["name", "files"]))]
    if not dataset.get("name") and not dataset.get("files"):
        dataset["name"] = draw(st.sampled_from(["glue", "imdb", "ñ/データ"]))
    return spec


NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
    st.sampled_from(["a", "1job", "job.v2", "Job", "job-", "-job", "a" * 51, "a" * 52, "a" * 63, "a" * 64]),
)


@st.composite
def documents(draw: st.DrawFn) -> tuple[dict[str, Any], str, tuple[str, ...] | None, dict[str, Any]]:
    """(document, mutation kind, mutated path or None, the document before the mutation)."""
    document = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": draw(NAMES)},
        "spec": draw(valid_specs()),
    }
    if draw(st.booleans()):
        return document, "none", None, document
    base = copy.deepcopy(document)
    kind = draw(st.sampled_from(sorted(MUTATIONS)))
    path, value = draw(MUTATIONS[kind]())
    return document, kind, mutate(document, path, value), base


# --- mutations: one field of the schema broken --------------------------------------------------------------


def schema_paths(
    schema: dict[str, Any], path: tuple[str, ...] = ("spec",)
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every (path, schema) of the spec reachable through objects with declared properties."""
    yield path, schema
    for key, child in (schema.get("properties") or {}).items():
        yield from schema_paths(child, (*path, key))


PATHS = list(schema_paths(SPEC_SCHEMA))[1:]
REQUIRED = [
    (*path, key)
    for path, schema in [(("spec",), SPEC_SCHEMA), *PATHS]
    for key in schema.get("required") or []
]
OBJECTS = [path for path, schema in [(("spec",), SPEC_SCHEMA), *PATHS] if schema.get("properties")]
NUMBERS = [(p, s) for p, s in PATHS if s.get("type") in ("integer", "number")]
BOUNDED = [(p, s) for p, s in NUMBERS if "minimum" in s or "maximum" in s]
STRINGS = [p for p, s in PATHS if s.get("type") == "string"]
LISTS = [(p, s) for p, s in PATHS if s.get("type") == "array"]
DELETE = object()  # the mutated value that removes the field

HOSTILE_STRINGS = st.sampled_from(
    [
        "",
        "x" * 100_000,
        "🚀" * 5000,
        "\u202e\u0000\ufeff",
        "null",
        "~",
        "yes",
        "no",
        "on",
        "0x1F",
        "1e3",
        ".inf",
        "- a\n- b",
        "{a: 1}",
        "&anchor *alias",
        "!!python/object:os.system",
        "key: value",
        "'\"`$(rm -rf /)`",
        "../../etc/passwd",
        "%{x}",
    ]
) | st.text(min_size=1, max_size=300)


def _wrong_type(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    kind = schema.get("type")
    options: list[Any] = [{"a": 1}, [1, "x"], "3", True, 7, 2.5]
    wrong = {
        "object": [[1, "x"], "3", True, 7, 2.5],
        "array": [{"a": 1}, "3", True, 7],
        "string": [{"a": 1}, [1, "x"], True, 7, 2.5],
        "integer": [{"a": 1}, [1], "3", True, 2.5, "x"],
        "number": [{"a": 1}, [1], "3", True, "x"],
        "boolean": [{"a": 1}, [1], "true", "yes", 1, 0, 2.5],
    }.get(str(kind), options)
    if schema.get("x-kubernetes-preserve-unknown-fields") and kind == "object":
        wrong = [[1], "3", True, 7]
    return st.sampled_from(wrong)


MUTATIONS: dict[str, Any] = {
    "wrong_type": lambda: st.sampled_from(PATHS).flatmap(
        lambda ps: st.tuples(st.just(ps[0]), _wrong_type(ps[1]))
    ),
    "out_of_range": lambda: st.sampled_from(BOUNDED).flatmap(
        lambda ps: st.tuples(
            st.just(ps[0]),
            st.sampled_from(
                [v for v in (ps[1].get("minimum"), ps[1].get("maximum")) if v is not None]
            ).flatmap(
                lambda edge: st.sampled_from(
                    [edge - 1, edge + 1, edge - 0.5, edge + 0.5, edge, 2**70, -(2**70), INT64 + 1]
                )
            ),
        )
    ),
    "unknown_field": lambda: st.tuples(
        st.sampled_from(OBJECTS).flatmap(
            lambda p: st.sampled_from(["bogusField", "Name", "ñ", "x.y", "a b", "\U0001d518nicode"]).map(
                lambda k: (*p, k)
            )
        ),
        st.sampled_from([1, "x", None, {"a": 1}]),
    ),
    "missing_required": lambda: st.tuples(st.sampled_from(REQUIRED), st.just(DELETE)),
    "hostile_string": lambda: st.tuples(st.sampled_from(STRINGS), HOSTILE_STRINGS),
    "huge_list": lambda: st.sampled_from(LISTS).flatmap(
        lambda ps: st.tuples(
            st.just(ps[0]),
            st.sampled_from([5_000, 20_000]).flatmap(
                # (at most ~250 kB of JSON: the API server refuses bodies over 3 MiB unread, and CI time is short)
                lambda n: from_schema(ps[1]["items"]).map(
                    lambda item: [item] * min(n, 250_000 // len(json.dumps(item)))
                )
            ),
        )
    ),
    "null": lambda: st.tuples(st.sampled_from(PATHS).map(lambda ps: ps[0]), st.none()),
    "non_finite": lambda: st.tuples(
        st.sampled_from(NUMBERS).map(lambda ps: ps[0]), st.sampled_from([math.inf, -math.inf, math.nan])
    ),
}


def mutate(document: dict[str, Any], path: tuple[str, ...], value: Any) -> tuple[str, ...]:
    """Set (or delete) `path` of the document, creating missing parent objects. Returns the path a rejection
    must name: `path`, or the first parent it created (which may now miss required fields of its own)."""
    node: Any = document
    named = path
    for depth, key in enumerate(path[:-1]):
        if not isinstance(node.get(key), dict):
            node[key] = {}
            if named == path:
                named = path[: depth + 1]
        node = node[key]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return named


# --- the three consumers ------------------------------------------------------------------------------------


class StepTimeout(Exception):
    """One step of an example ran past STEP_SECONDS: a hang."""


@contextmanager
def bounded(what: str) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"{what} ran past {STEP_SECONDS}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, STEP_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def validate(document: dict[str, Any]) -> list[str] | None:
    """`kubetune validate`'s verdict (the parser it calls): None when valid, else the problems' fields."""
    with bounded("kubetune validate"):
        try:
            parse_job(document, for_cluster=True)  # (reads the document, never changes it)
        except SpecError as error:
            return [p.field for p in error.problems]
    return None


def dry_run(
    api: Any,  # client.CustomObjectsApi (its methods are untyped)
    namespace: str,
    document: dict[str, Any],
) -> tuple[dict[str, Any] | None, str]:
    """(the defaulted object, "") when the API server accepts the document, else (None, its answer)."""
    try:
        body = json.dumps(document, allow_nan=False)
    except ValueError:
        return None, "not JSON: a non-finite number"
    try:
        created = api.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            json.loads(body),
            dry_run="All",
            field_validation="Strict",
            _request_timeout=REQUEST_SECONDS,
        )
    except urllib3.exceptions.TimeoutError:
        return None, f"HANG: no answer in {REQUEST_SECONDS}s"
    except ApiException as error:
        if error.status not in (400, 413, 422):
            raise AssertionError(f"the API server answered {error.status}: {error.body}") from None
        return None, _answer(error.body or "")
    return created, ""


def _answer(body: str) -> str:
    """The API server's message and every cause's field, as one text to look for field paths in."""
    try:
        status = json.loads(body)
    except ValueError:
        return body
    fields = [c.get("field", "") for c in (status.get("details") or {}).get("causes") or []]
    return " ".join([status.get("message", ""), *fields])


def run_planner(created: dict[str, Any]) -> JobPhase | None:
    """What the operator decides for the API server's object on its first reconcile (no pods yet); builds
    every child and the first and last worker pods. Raises on a Failed plan whose message names no field."""
    metadata = created["metadata"]
    job = ObservedJob(
        name=metadata["name"],
        namespace=metadata["namespace"],
        uid="fuzz-uid",
        generation=1,
        creation_time=T0,
        spec=created["spec"],
        status=FineTuneJobStatus(),
    )
    with bounded("the planner"):
        result = plan(job, [], T0)
        if result.status.phase == JobPhase.FAILED:
            assert FIELD_PATH.search(result.status.message or ""), result.status.message
            return result.status.phase
        assert result.spec is not None, result.status
        if result.status.phase == JobPhase.SUSPENDED:  # spec.suspend or runPolicy.suspend: true
            assert result.spec.suspended and not result.create_workers, result.status
            return result.status.phase
        assert result.status.phase == JobPhase.PENDING, result.status
        ref = JobRef(job.name, job.namespace, job.uid)
        json.dumps(build_job_children(ref, result.spec))
        for index in {result.create_workers[0], result.create_workers[-1]}:
            json.dumps(build_worker_pod(WorkerContext(ref, result.spec, index, 0, "trainer:fuzz"), 1))
    return result.status.phase


# --- field naming ---------------------------------------------------------------------------------------------

FIELD_PATH = re.compile(r"\b(?:spec|metadata)(?:\.[^\s\[\]:.,'\"]+|\[\d+\])*")
UNKNOWN_FIELD = re.compile(r'unknown field "((?:spec|metadata)[^"]*)"')  # strict decoding: may hold spaces


def normal(path: str) -> str:
    """spec.training.metrics[0] → spec.training.metrics."""
    return re.sub(r"\[\d+\]", "", path)


# Cross-field rules name one field of the pair they check: a mutation of the other one is rightly refused
# under that name (several nodes with output.path on no shared volume is refused at spec.output.path).
CROSS_FIELD_PARTNERS = {
    "spec.output.path": (
        "spec.distribution.nodes",
        "spec.kubernetes.outputVolume",
        "spec.output.objectStorage",
    ),
}


def related(named: str, mutated: tuple[str, ...]) -> bool:
    """Whether the path a rejection names is the mutated one, one of its parents or one of its fields, or the
    field a cross-field rule with it names (compared as dotted text: a mutated key may itself hold a dot)."""
    whole = ".".join(mutated)
    return any(
        path == whole or whole.startswith(path + ".") or path.startswith(whole + ".")
        for path in (named, *CROSS_FIELD_PARTNERS.get(named, ()))
    )


def api_names(answer: str, mutated: tuple[str, ...] | None) -> bool:
    found = [normal(m.group(0)) for m in FIELD_PATH.finditer(answer)]
    found += [normal(m.group(1)) for m in UNKNOWN_FIELD.finditer(answer)]
    if mutated is None:
        return bool(found)
    return any(related(f, mutated) for f in found)


def validate_names(fields: list[str], mutated: tuple[str, ...] | None) -> bool:
    if not fields or not all(re.match(r"(spec|metadata|kind|apiVersion)\b", f) for f in fields):
        return False
    return mutated is None or any(related(normal(f), mutated) for f in fields)


FIELD_LOCAL = {
    "wrong_type",
    "out_of_range",
    "unknown_field",
    "missing_required",
    "huge_list",
    "null",
    "non_finite",
}


@dataclass
class Example:
    document: dict[str, Any]
    kind: str  # the mutation, or "none"
    mutated: tuple[str, ...] | None
    local: tuple[str, ...] | None  # the field a rejection must name, when the mutation alone broke it
    fields: list[str] | None  # validate's problem fields; None: valid


def fuzz_settings(examples: int) -> Any:
    """Hypothesis settings of the fuzzes: reproducible in CI (a fixed sequence of `examples`, no example
    database), no per-example deadline (the API server's verdicts come in batches), generation only."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def generate(counts: Counter[str]) -> list[Example]:
    """EXAMPLES documents, each already through `validate` (the API server's verdicts come in a batch)."""
    examples: list[Example] = []

    @fuzz_settings(EXAMPLES)
    @given(documents())
    def one(drawn: tuple[dict[str, Any], str, tuple[str, ...] | None, dict[str, Any]]) -> None:
        document, kind, mutated, base = drawn
        counts[f"mutation: {kind}"] += 1
        fields = validate(document)
        # The rejection must point at the mutated field when the mutation alone broke a valid document
        # (else a cross-field rule of the base may be the only thing named, and that is right too).
        local = mutated if kind in FIELD_LOCAL and (base is document or validate(base) is None) else None
        examples.append(Example(document, kind, mutated, local, fields))

    one()
    return examples


def test_hostile_specs_agree_between_validate_the_api_server_and_the_planner(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    counts: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    disagreements: dict[str, str] = {}
    unnamed: dict[str, str] = {}

    def note(bucket: dict[str, str], key: str, document: dict[str, Any], detail: str) -> None:
        shown = json.dumps(document, default=str)
        if key not in bucket or len(shown) < len(bucket[key]):
            bucket[key] = f"{shown[:600]} -> {detail[:400]}"

    clock = time.monotonic()
    examples = generate(counts)
    seconds["generate + validate"] = time.monotonic() - clock
    clock = time.monotonic()
    # One dry-run per example over kept-alive connections, a few at a time (the server works in parallel).
    with ThreadPoolExecutor(API_THREADS) as pool:
        answers = list(pool.map(lambda e: dry_run(api, kube_namespace, e.document), examples))
    seconds["API server"] = time.monotonic() - clock
    clock = time.monotonic()
    for example, (created, answer) in zip(examples, answers, strict=True):
        document, fields, local = example.document, example.fields, example.local
        counts["examples"] += 1
        key = f"{example.kind} at {'.'.join(example.mutated) if example.mutated else '-'}"
        if fields is None:
            counts["validate accepts"] += 1
        elif not validate_names(fields, local):
            note(unnamed, f"validate, {key}", document, repr(fields))
        if created is not None:
            counts["API server accepts"] += 1
        elif answer.startswith("not JSON"):
            counts["not JSON (non-finite)"] += 1
        elif answer.startswith("HANG"):
            note(unnamed, f"API server HANG, {key}", document, answer)
        elif not api_names(answer, local):
            note(unnamed, f"API server, {key}", document, answer)
        if (fields is None) != (created is not None):
            counts["disagreements"] += 1
            verdict = (
                "validate accepts, API server refuses"
                if fields is None
                else "API server accepts, validate refuses"
            )
            note(disagreements, f"{verdict}: {key}", document, answer or repr(fields))
            continue
        counts["agreements"] += 1
        if created is not None:
            counts[f"planner: {run_planner(created)}"] += 1
            # What the operator reads back (the server's defaults filled in) must validate too.
            assert validate({**document, "spec": created["spec"]}) is None, created["spec"]
    seconds["planner"] = time.monotonic() - clock
    print("\nspec fuzz:", dict(sorted(counts.items())))
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})
    report = [f"DISAGREE {k}: {v}" for k, v in sorted(disagreements.items())]
    report += [f"UNNAMED {k}: {v}" for k, v in sorted(unnamed.items())]
    print("\n".join(report))
    assert counts["examples"] >= EXAMPLES
    assert not report, f"{len(disagreements)} disagreement classes, {len(unnamed)} unnamed-rejection classes"
