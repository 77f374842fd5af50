"""A property-based fuzz of hostile FineTuneJob metadata and of what the operator copies onto the objects it
creates (issue 11): names of every length from 1 to 261 characters (DNS labels and subdomains, digits first,
dots, capitals), generateName, the job's own labels and annotations (Kueue's queue label among them), and the
labels, annotations, node selector, environment and Secret references spec.kubernetes puts on the worker pods:
hostile keys and values (prefixes, the 63 and 253 limits, empty, unicode, the Kelvin sign that Go lowercases
to 'k', kubetune's and Kueue's own keys), huge maps.

Each document goes through `kubetune validate`'s parser and the real API server (a server-side dry-run create
against the generated CRD), as in test_spec_fuzz; what both accept is planned by the operator's pure planner,
and every object the plan makes (Service, ConfigMap, ServiceAccount, Role, RoleBinding, the first and last
worker pods) is sent to the API server too (dry-run creates; the ServiceAccounts the pods name are created
for real first, since the pods' admission looks them up). A Workload's queueName is checked against Kueue's
own CRD schema (its pattern and length, read from the Kueue build).

Properties:
- no crash and no hang (each step bounded, as in test_spec_fuzz);
- every rejection names a field, related to one the example made hostile (metadata.name and
  metadata.generateName count as one);
- `validate` and the API server agree, except for the one rule the API server cannot check: a queue label
  whose value cannot name a Kueue LocalQueue. `validate` refuses it, and the planner fails such a job
  (InvalidSpec) naming metadata.labels[kueue.x-k8s.io/queue-name] instead of retrying a Workload that Kueue's
  schema refuses;
- every child of an accepted job is accepted by the API server, carries the operator's own labels (never the
  job's values for them) and the job's extra ones.

Reproducible in CI: derandomize=True, no example database; the counts and seconds are printed (`-s`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import urllib3
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.controller import names
from kubetune.controller.children import JobRef, WorkerContext, build_job_children, build_worker_pod
from kubetune.controller.plan import ObservedJob, PlanOptions, plan
from kubetune.controller.queueing import build_workload
from kubetune.spec.kube_names import qualified_name_problem
from kubetune.spec.models import API_GROUP, API_VERSION, KIND, QUEUE_LABEL, reserved_key_problem
from kubetune.spec.status import FineTuneJobStatus
from kubetune.spec.status import Phase as JobPhase

from tests.kube.kueue import KueueNotFound, find_kueue
from tests.operator import test_spec_fuzz as spec_fuzz
from tests.operator.factories import T0

pytestmark = pytest.mark.cluster

EXAMPLES = int(os.environ.get("KUBETUNE_METADATA_FUZZ_EXAMPLES", "500"))  # + the sweep below
API_THREADS = 4
NAME_LENGTHS = range(1, 262)

# --- names ------------------------------------------------------------------------------------------------------


def name_of_length(length: int, style: str) -> str:
    """A name of `length` characters: `plain` (a valid DNS label but for its length), `dotted` (a DNS subdomain),
    `digit` (starts with a digit), `capital` (starts with a capital)."""
    body = ("job-" + "0123456789abcdef-" * 16)[:length]
    if style == "dotted":
        body = ".".join(body[i : i + 9] for i in range(0, length, 10))[:length].ljust(length, "x")
        body = body.replace("-.", "x.").replace(".-", ".x")
    if body.endswith(("-", ".")):
        body = body[:-1] + "z"
    if style == "digit":
        body = "7" + body[1:]
    elif style == "capital":
        body = "J" + body[1:]
    return body


NAMING = st.sampled_from(["name", "name", "generateName", "both", "neither"])
# Every length as a DNS label and as a subdomain; digits-first and capitals at the lengths that matter.
EDGE_LENGTHS = (1, 2, 50, 51, 52, 63, 64, 253, 254)
NAME_SWEEP = [(n, style) for n in NAME_LENGTHS for style in ("plain", "dotted")] + [
    (n, style) for n in EDGE_LENGTHS for style in ("digit", "capital")
]
NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,60}[a-z0-9]", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,80}[a-z0-9]", fullmatch=True),
    st.tuples(st.sampled_from(NAME_LENGTHS), st.sampled_from(["plain", "dotted", "digit", "capital"])).map(
        lambda drawn: name_of_length(*drawn)
    ),
    st.sampled_from(
        ["a", "z9", "job--x", "job.v2", "Job", "job-", "-job", "jöb", "job_1", "", " ", "a" * 254]
    ),
)
GENERATE_NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,50}", fullmatch=True),
    st.sampled_from(
        ["job-", "j" * 46, "j" * 47, "j" * 58, "j" * 70, "Job-", "1job-", "job.v2-", "jöb-", "-", ""]
    ),
)

# --- label and annotation keys and values --------------------------------------------------------------------

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?){0,2}"
PREFIX_253 = ("a" * 63 + ".") * 3 + "b" * 61
EDGE_KEYS = [
    "a" * 63,
    "a" * 64,
    "x/" + "a" * 63,
    "x/" + "a" * 64,
    PREFIX_253 + "/k",
    PREFIX_253 + "b/k",
    "a/b/c",
    "/a",
    "a/",
    "",
    " ",
    "a b",
    "-a",
    "a-",
    "_a",
    "a_b.c-d",
    "a..b/c",
    "Example.COM/x",
    "example.com/X_y.Z",
    "ключ",
    "\u212aey",  # the Kelvin sign: Go lowercases it to 'k'
    "\u0130d",  # Go lowercases 'İ' to 'i'
    "kubetune.io/job-name",
    "kubetune.io/role",
    "kubetune.io/spec-generation",
    "kubetune.io/custom",
    "KUBETUNE.IO/custom",
    "kueue.x-k8s.io/queue-name",
    "kueue.x-k8s.io/pod-group-name",
    "kueue.x-k8s.io/pod-group-total-count",
    "app.kubernetes.io/name",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "kubernetes.io/hostname",
    "k8s.v1.cni.cncf.io/networks",
]
KEY_FORMS = st.from_regex(rf"({_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,12}}[A-Za-z0-9])?", fullmatch=True)
KEYS = st.one_of(
    KEY_FORMS,
    st.sampled_from(EDGE_KEYS),
    spec_fuzz._TEXT,
)
LABEL_VALUE_FORMS = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,12}[A-Za-z0-9])?)?", fullmatch=True)
LABEL_VALUES = st.one_of(
    LABEL_VALUE_FORMS,
    st.sampled_from(["", "a" * 63, "a" * 64, "a b", "-a", "a-", "é", "true", "null", "0x1F", "a\n"]),
    spec_fuzz._TEXT,
)
ANNOTATION_VALUES = st.one_of(
    spec_fuzz._TEXT,
    st.sampled_from(["", "x" * 8192, "x" * 8193, '[{"name": "rdma", "interface": "net1"}]', "🚀" * 300]),
)
QUEUE_NAMES = ["team-a", "q.gpu", "a" * 63, "Team_A", "GPU", "q_1", "a.", "-q", "", "q q", "é", "a..b", "q-"]
QUEUE_VALUES = st.sampled_from(QUEUE_NAMES)
ENV_NAME_FORMS = st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True)
ENV_NAMES = st.one_of(
    ENV_NAME_FORMS,
    st.sampled_from(
        [
            *("1ABC", "a.b-c", "with space", "A=B", "=", "", "é", "\t", "x\n", "~!@#$%^&*()", " "),
            *("KUBETUNE_NODE_RANK", "HF_HOME", "PYTHONUNBUFFERED", "KUBETUNE_ATTEMPT"),
        ]
    ),
    spec_fuzz._TEXT,
)
OBJECT_NAME_FORMS = st.from_regex(_SUBDOMAIN, fullmatch=True)
OBJECT_NAMES = st.one_of(
    OBJECT_NAME_FORMS,
    st.sampled_from(["Bad_Name", "", "a" * 253, "a" * 254, "a.b", "-a", "a..b", "a b", "é"]),
)
# A Secret's key: the ConfigMap-key alphabet, but "." and ".." are refused (path segments).
SECRET_KEY_FORMS = st.from_regex(r"[-._a-zA-Z0-9]{1,12}", fullmatch=True).filter(
    lambda k: k not in (".", "..")
)
SECRET_KEYS = st.one_of(
    SECRET_KEY_FORMS, st.sampled_from(["", "a/b", "a b", "k" * 254, ".", "..", "..a", ".a", "a.."])
)


def maps(keys: st.SearchStrategy[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys, values, max_size=4)


def huge_map(kind: str, size: int) -> dict[str, str]:
    """`size` entries of valid keys: at and past the bounds (64 labels, 30 annotations, 512 variables)."""
    value = {"labels": "v", "annotations": "x" * 8000, "env": "1"}[kind]
    return {f"k{i}" if kind != "env" else f"VAR_{i}": value for i in range(size)}


WRONG_TYPES = st.sampled_from([7, [1, "x"], True, {"a": 1}, None, "x"])

# --- documents -------------------------------------------------------------------------------------------------


@dataclass
class Example:
    document: dict[str, Any]
    hostile: list[str]  # dotted paths made hostile (a rejection must name one of them, or a part of one)
    clean: bool = False  # every part drawn valid: both must accept it
    check_children: bool = True  # dry-run its children when accepted (the sweep: at the edge lengths only)
    fields: list[str] | None = None  # validate's problem fields; None: valid
    children: list[dict[str, Any]] = field(default_factory=list)


def base_spec(nodes: int, processes: int, report: bool) -> dict[str, Any]:
    return {
        "model": {"name": "prajjwal1/bert-tiny"},
        "dataset": {"name": "glue", "config": "sst2"},
        "distribution": {"nodes": nodes, "processesPerNode": processes},
        "output": {"ephemeral": True},
        "runPolicy": {"reportProgress": report},
    }


def document(metadata: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


# What a clean document draws from: valid, but at the edges (63-character names, 253-character prefixes, keys
# of other domains, variable names Kubernetes 1.34+ takes).
VALID_NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,49}[a-z0-9]", fullmatch=True),
    st.integers(1, 51).map(lambda n: name_of_length(n, "plain")),
)
VALID_GENERATE_NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,45}", fullmatch=True)
VALID_KEYS = st.one_of(
    KEY_FORMS,
    st.sampled_from([k for k in EDGE_KEYS if not reserved_key_problem(k) and not qualified_name_problem(k)]),
)
VALID_LABEL_VALUES = st.one_of(LABEL_VALUE_FORMS, st.sampled_from(["", "a" * 63, "true", "0x1F"]))
VALID_ANNOTATION_VALUES = st.one_of(spec_fuzz._TEXT, st.sampled_from(["", "x" * 8192, "🚀" * 300]))
VALID_ENV_NAMES = st.one_of(
    ENV_NAME_FORMS,
    st.sampled_from(["1ABC", "a.b-c", "with space", "~!@#$%^&*()", " ", "KUBETUNE_NODE_RANK", "HF_HOME"]),
)
VALID_OBJECT_NAMES = st.one_of(OBJECT_NAME_FORMS, st.sampled_from(["a" * 253, "a.b"]))
VALID_SECRET_KEYS = SECRET_KEY_FORMS


@st.composite
def examples(draw: st.DrawFn) -> Example:
    """A document whose areas (the name, the job's labels and annotations, each spec.kubernetes field) are all
    valid (`clean`, half of them: these must be accepted and planned), one of them hostile, or all hostile."""
    mode = draw(st.sampled_from(["clean", "clean", "one", "many"]))
    areas = ["metadata.name", "metadata.labels", "metadata.annotations"] + [
        f"spec.kubernetes.{key}"
        for key in (
            *("labels", "annotations", "nodeSelector", "env", "secretEnv"),
            *("envFromSecrets", "serviceAccountName", "hfTokenSecret"),
        )
    ]
    bad = {"clean": set(), "one": {draw(st.sampled_from(areas))}, "many": set(areas)}[mode]

    def pick(area: str, valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
        return draw(hostile if area in bad else valid)

    metadata: dict[str, Any] = {}
    naming = pick("metadata.name", st.sampled_from(["name", "name", "generateName", "both"]), NAMING)
    if naming in ("name", "both"):
        metadata["name"] = pick("metadata.name", VALID_NAMES, NAMES)
    if naming in ("generateName", "both"):
        metadata["generateName"] = pick("metadata.name", VALID_GENERATE_NAMES, GENERATE_NAMES)
    if draw(st.booleans()):
        metadata["labels"] = pick(
            "metadata.labels", maps(VALID_KEYS, VALID_LABEL_VALUES), maps(KEYS, LABEL_VALUES)
        )
    if draw(st.booleans()):
        queue = pick("metadata.labels", st.sampled_from(["team-a", "q.gpu", "a" * 63]), QUEUE_VALUES)
        metadata.setdefault("labels", {})[QUEUE_LABEL] = queue
    if draw(st.integers(0, 3)) == 0:
        metadata["annotations"] = pick(
            "metadata.annotations", maps(VALID_KEYS, VALID_ANNOTATION_VALUES), maps(KEYS, ANNOTATION_VALUES)
        )
    if "metadata.annotations" in bad and draw(st.integers(0, 10)) == 0:
        metadata["annotations"] = huge_map("annotations", draw(st.sampled_from([32, 33, 40])))
    nodes = draw(st.one_of(st.sampled_from([1, 2, 1024]), st.integers(1, 1024)))
    spec = base_spec(nodes, draw(st.integers(1, 8)), draw(st.booleans()))
    secret = {"name": VALID_OBJECT_NAMES, "key": VALID_SECRET_KEYS}
    kubernetes: dict[str, Any] = {}
    for key, valid, hostile in (
        ("labels", maps(VALID_KEYS, VALID_LABEL_VALUES), maps(KEYS, LABEL_VALUES)),
        ("annotations", maps(VALID_KEYS, VALID_ANNOTATION_VALUES), maps(KEYS, ANNOTATION_VALUES)),
        ("nodeSelector", maps(VALID_KEYS, VALID_LABEL_VALUES), maps(KEYS, LABEL_VALUES)),
        ("env", maps(VALID_ENV_NAMES, spec_fuzz._TEXT), maps(ENV_NAMES, spec_fuzz._TEXT)),
        (
            "secretEnv",
            maps(VALID_ENV_NAMES, st.fixed_dictionaries(secret)),
            maps(ENV_NAMES, st.fixed_dictionaries({"name": OBJECT_NAMES, "key": SECRET_KEYS})),
        ),
        ("envFromSecrets", st.lists(VALID_OBJECT_NAMES, max_size=2), st.lists(OBJECT_NAMES, max_size=2)),
        ("serviceAccountName", VALID_OBJECT_NAMES, OBJECT_NAMES),
        (
            "hfTokenSecret",
            st.fixed_dictionaries({"name": VALID_OBJECT_NAMES}),
            st.fixed_dictionaries({"name": OBJECT_NAMES}),
        ),
    ):
        area = f"spec.kubernetes.{key}"
        if area in bad or draw(st.integers(0, 2)) == 0:
            kubernetes[key] = pick(area, valid, hostile)
    for kind, bound in (("labels", 64), ("annotations", 30), ("env", 512)):
        if draw(st.integers(0, 40)) == 0:  # at the bound when clean, past it too when hostile
            over = f"spec.kubernetes.{kind}" in bad and draw(st.booleans())
            kubernetes[kind] = huge_map(kind, bound + over)
    if kubernetes:
        spec["kubernetes"] = kubernetes
    doc = document(metadata, spec)
    if mode == "many" and draw(st.integers(0, 8)) == 0:  # one part of the metadata of the wrong JSON type
        part = draw(st.sampled_from(["name", "generateName", "labels", "annotations"]))
        metadata[part] = draw(WRONG_TYPES)
    if mode == "many" and draw(st.integers(0, 30)) == 0:
        doc["metadata"] = draw(st.sampled_from([None, "job", [1], {}]))
        bad.add("metadata")
    return Example(doc, sorted(bad), clean=mode == "clean")


def sweep() -> list[Example]:
    """Every name length from 1 to 261 in each style, on an otherwise plain job of 1024 nodes (the longest
    worker hostname) with progress RBAC; and environments of 0.6 and 1.1 MB (a FineTuneJob holds 1.5 MiB, its
    ConfigMap, which holds the spec, 1 MiB)."""
    found = [
        Example(
            document({"name": name_of_length(n, style)}, base_spec(1024, 1, True)),
            ["metadata.name"],
            check_children=n in EDGE_LENGTHS,
        )
        for n, style in NAME_SWEEP
    ]
    for queue in QUEUE_NAMES:
        labels = {QUEUE_LABEL: queue}
        found.append(
            Example(
                document({"name": "queued", "labels": labels}, base_spec(2, 1, True)), ["metadata.labels"]
            )
        )
    for size in (600_000, 1_100_000):
        spec = {**base_spec(2, 1, True), "kubernetes": {"env": {"BIG": "x" * size}}}
        found.append(Example(document({"name": f"env-{size}"}, spec), ["spec.kubernetes.env", "spec"]))
    return found


def generate(counts: Counter[str]) -> list[Example]:
    """The sweep and EXAMPLES drawn documents, each already through `validate`."""
    found = sweep()

    @spec_fuzz.fuzz_settings(EXAMPLES)
    @given(examples())
    def one(example: Example) -> None:
        found.append(example)

    one()
    for example in found:
        counts["examples"] += 1
        example.fields = spec_fuzz.validate(example.document)
    return found


# --- properties -------------------------------------------------------------------------------------------------


def related(named: str, hostile: list[str]) -> bool:
    """Whether a path a rejection names is one of the hostile ones, a part or a parent of one (metadata.name
    and metadata.generateName being one thing: a name)."""
    named = spec_fuzz.normal(named)
    if named in ("metadata.name", "metadata.generateName"):
        named = "metadata.name"
    for path in hostile:
        path = "metadata.name" if path == "metadata.generateName" else path
        if named == path or named.startswith(path + ".") or path.startswith(named + "."):
            return True
    return False


# The API server's JSON decoder names metadata in Go's terms: "Go struct field ObjectMeta.name", "Go value of
# type v1.ObjectMeta" (metadata of the wrong JSON type).
GO_META_FIELD = re.compile(r"\bObjectMeta\.(\w+)")
GO_META = re.compile(r"\bv1\.ObjectMeta\b")


def api_paths(answer: str) -> list[str]:
    """The field paths an answer of the API server names."""
    found = [m.group(0) for m in spec_fuzz.FIELD_PATH.finditer(answer)]
    found += [m.group(1) for m in spec_fuzz.UNKNOWN_FIELD.finditer(answer)]
    found += [f"metadata.{m.group(1)}" for m in GO_META_FIELD.finditer(answer)]
    return found + ["metadata" for _ in GO_META.finditer(answer)]


def kubetune_only(example: Example) -> bool:
    """A refusal by `validate` of a rule the API server cannot check: a queue label that names no LocalQueue."""
    labels = example.document.get("metadata", {}).get("labels") or {}
    return bool(example.fields) and set(example.fields) == {"metadata.labels"} and QUEUE_LABEL in labels


def kueue_queue_name_rule() -> tuple[re.Pattern[str], int]:
    """The pattern and length bound Kueue's Workload CRD puts on spec.queueName (the version kubetune writes)."""
    try:
        build = find_kueue()
    except KueueNotFound as error:
        pytest.fail(f"the fuzz checks Workloads against Kueue's own schema: {error}", pytrace=False)
    for path in sorted(build.crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != "Workload":
            continue
        for version in crd["spec"]["versions"]:
            if version["name"] == "v1beta2":
                queue = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["queueName"]
                return re.compile(queue["pattern"]), int(queue["maxLength"])
    pytest.fail(f"no Workload v1beta2 CRD in {build.crd_dir}", pytrace=False)


def plan_children(created: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """The planner's phase and message for the API server's object, and every object its plan makes (with the
    Workload's queue, when it has one)."""
    metadata = created["metadata"]
    labels = dict(metadata.get("labels") or {})
    job = ObservedJob(
        name=metadata["name"],
        namespace=metadata["namespace"],
        uid="fuzz-uid",
        generation=1,
        creation_time=T0,
        spec=created["spec"],
        status=FineTuneJobStatus(),
        labels=labels,
    )
    with spec_fuzz.bounded("the planner"):
        result = plan(job, [], T0, PlanOptions(kueue=True))
        phase, message = str(result.status.phase), result.status.message or ""
        if result.status.phase == JobPhase.FAILED or result.spec is None:
            return phase, message, []
        ref = JobRef(job.name, job.namespace, job.uid)
        children = build_job_children(ref, result.spec)
        last = result.spec.distribution.nodes - 1
        pods = [build_worker_pod(WorkerContext(ref, result.spec, i, 0, "trainer:fuzz"), 1) for i in {0, last}]
        children += pods
        if result.ensure_workload:
            queue = labels[QUEUE_LABEL].strip()
            children.append(build_workload(ref, pods[0], result.spec.distribution.nodes, queue, None))
    return phase, message, children


def operator_wins(pod: dict[str, Any], job: str, spec: dict[str, Any]) -> str | None:
    """Why the pod's identity is not the operator's, or the job's extra labels are missing; None when right."""
    labels = pod["metadata"]["labels"]
    ours = {**names.job_labels(job), names.LABEL_COMPONENT: "worker", names.LABEL_ROLE: names.ROLE_WORKER}
    wrong = {k: labels.get(k) for k, v in ours.items() if labels.get(k) != v}
    extra = (spec.get("kubernetes") or {}).get("labels") or {}
    missing = {k: v for k, v in extra.items() if labels.get(k) != v}
    env = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    doubled = sorted({n for n in env if env.count(n) > 1})
    if wrong or missing or doubled:
        return f"labels not ours: {wrong}; extra labels lost: {missing}; variables twice: {doubled}"
    return None


CREATE = {
    "Service": lambda core, rbac: core.create_namespaced_service,
    "ConfigMap": lambda core, rbac: core.create_namespaced_config_map,
    "ServiceAccount": lambda core, rbac: core.create_namespaced_service_account,
    "Pod": lambda core, rbac: core.create_namespaced_pod,
    "Role": lambda core, rbac: rbac.create_namespaced_role,
    "RoleBinding": lambda core, rbac: rbac.create_namespaced_role_binding,
}


def dry_run_child(core: Any, rbac: Any, child: dict[str, Any]) -> str:
    """ "" when the API server accepts the child (dry-run), else its answer."""
    create = CREATE[child["kind"]](core, rbac)
    try:
        create(
            child["metadata"]["namespace"],
            child,
            dry_run="All",
            field_validation="Strict",
            _request_timeout=spec_fuzz.REQUEST_SECONDS,
        )
    except urllib3.exceptions.TimeoutError:
        return f"HANG: no answer in {spec_fuzz.REQUEST_SECONDS}s"
    except ApiException as error:
        return f"{error.status}: {spec_fuzz._answer(error.body or '')}"
    return ""


def create_service_account(core: Any, namespace: str, name: str) -> str:
    """Create (for real) a ServiceAccount a planned pod runs as (the pods' admission looks it up): "" when it
    exists now, else the API server's answer."""
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except ApiException as error:
        if error.status != 409:
            return f"{error.status}: {spec_fuzz._answer(error.body or '')}"
    return ""


def test_hostile_metadata_and_pod_extras_agree_and_plan_into_children_the_api_server_accepts(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    api_client = kube_cluster.api_client()
    api = client.CustomObjectsApi(api_client)
    core: Any = client.CoreV1Api(api_client)
    rbac: Any = client.RbacAuthorizationV1Api(api_client)
    queue_pattern, queue_max = kueue_queue_name_rule()
    counts: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    problems: dict[str, str] = {}

    def note(key: str, doc: Any, detail: str) -> None:
        shown = json.dumps(doc, default=str, ensure_ascii=False)
        if key not in problems or len(shown) < len(problems[key]):
            problems[key] = f"{shown[:700]} -> {detail[:500]}"

    clock = time.monotonic()
    found = generate(counts)
    seconds["generate + validate"] = time.monotonic() - clock
    clock = time.monotonic()
    with ThreadPoolExecutor(API_THREADS) as pool:
        answers = list(pool.map(lambda e: spec_fuzz.dry_run(api, kube_namespace, e.document), found))
    seconds["API server (jobs)"] = time.monotonic() - clock
    clock = time.monotonic()
    accepted: list[tuple[Example, dict[str, Any]]] = []
    for example, (created, answer) in zip(found, answers, strict=True):
        doc, fields = example.document, example.fields
        shape = ",".join(sorted(set(example.hostile) - {"metadata.name", "metadata.generateName"})) or "names"
        counts["validate accepts" if fields is None else "validate refuses"] += 1
        counts["clean"] += example.clean
        counts["API server accepts" if created is not None else "API server refuses"] += 1
        if fields is not None and not (
            all(re.match(r"(spec|metadata|kind|apiVersion)\b", f) for f in fields)
            and any(related(f, example.hostile) for f in fields)
        ):
            note(f"validate names no hostile field ({shape})", doc, repr(fields))
        if created is None:
            if answer.startswith("HANG"):
                note(f"API server HANG ({shape})", doc, answer)
            elif not any(related(p, example.hostile) for p in api_paths(answer)):
                note(f"API server names no hostile field ({shape})", doc, answer)
        if example.clean and (fields is not None or created is None):
            note("a clean document is refused", doc, answer or repr(fields))
            continue
        if created is not None and fields is not None and kubetune_only(example):
            counts["kubetune-only refusals (queue label)"] += 1
            phase, message, _ = plan_children(created)
            if phase != str(JobPhase.FAILED) or f"metadata.labels[{QUEUE_LABEL}]" not in message:
                note("the planner does not fail a job validate refuses, naming the label", doc, message)
            continue
        if (fields is None) != (created is not None):
            verdict = "validate accepts, API server refuses" if fields is None else "API server accepts only"
            note(f"DISAGREE: {verdict} ({shape})", doc, answer or repr(fields))
            continue
        if created is not None:
            accepted.append((example, created))
    for example, created in accepted:
        phase, message, example.children = plan_children(created)
        counts[f"planner: {phase}"] += 1
        if phase == str(JobPhase.FAILED):  # (a spec too large for its ConfigMap: named, nothing created)
            if not any(related(p, example.hostile) for p in api_paths(message)):
                note("the planner fails a job naming no hostile field", example.document, message)
        elif phase not in (str(JobPhase.PENDING), str(JobPhase.QUEUED)):
            note(f"planner: {phase}", example.document, message)
        for child in example.children:
            if child["kind"] == "Pod":
                wrong = operator_wins(child, created["metadata"]["name"], created["spec"])
                if wrong:
                    note("a pod's identity", example.document, wrong)
            if child["kind"] == "Workload":
                queue = child["spec"]["queueName"]
                if len(queue) > queue_max or not queue_pattern.search(queue):
                    note("Kueue's schema refuses the Workload", example.document, queue)
    seconds["planner"] = time.monotonic() - clock
    clock = time.monotonic()
    # The job-level children first (dry-run), then the ServiceAccounts the pods name (for real), then the pods.
    sent = [(e, c) for e, _ in accepted if e.check_children for c in e.children if c["kind"] in CREATE]
    first = [(e, c) for e, c in sent if c["kind"] != "Pod"]
    pods = [(e, c) for e, c in sent if c["kind"] == "Pod"]
    with ThreadPoolExecutor(API_THREADS) as pool:
        child_answers = list(pool.map(lambda pair: dry_run_child(core, rbac, pair[1]), first))
        accounts = sorted({"default"} | {c["spec"].get("serviceAccountName") or "default" for _, c in pods})
        for account, answer in zip(
            accounts,
            pool.map(lambda a: create_service_account(core, kube_namespace, a), accounts),
            strict=True,
        ):
            if answer:
                note("the API server refuses a pod's ServiceAccount", account, answer)
        child_answers += list(pool.map(lambda pair: dry_run_child(core, rbac, pair[1]), pods))
    for (example, child), answer in zip([*first, *pods], child_answers, strict=True):
        counts[f"children: {child['kind']}"] += 1
        if answer:
            note(f"the API server refuses a {child['kind']} of an accepted job", example.document, answer)
    seconds["API server (children)"] = time.monotonic() - clock
    print("\nmetadata fuzz:", dict(sorted(counts.items())))
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})
    print("\n".join(f"{k}: {v}" for k, v in sorted(problems.items())))
    assert counts["examples"] >= EXAMPLES + len(NAME_SWEEP) + 2
    assert counts["kubetune-only refusals (queue label)"] >= 4  # Team_A, GPU, q_1, a..b
    assert counts["clean"] >= EXAMPLES // 3, "too few clean documents"
    assert not problems, f"{len(problems)} problem classes (printed above)"
