"""Given a FineTuneJob's metadata and what spec.kubernetes copies onto its pods, `kubetune validate` refuses
what the API server would refuse (on the job at `kubectl apply`, or on a child at reconcile time), naming the
field, and every name the operator derives from an accepted job fits Kubernetes' rules (issue 11).

Pure: the fuzz in tests/operator/test_metadata_fuzz.py checks the same against the real API server."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from typing import Any

from kubetune.controller import names
from kubetune.controller.children import JobRef, WorkerContext, build_job_children, build_worker_pod
from kubetune.controller.plan import ObservedJob, PlanOptions, plan
from kubetune.controller.queueing import build_workload, workload_name
from kubetune.spec import SpecError, parse_job
from kubetune.spec.kube_names import (
    QUALIFIED_KEY_MAX,
    TOTAL_ANNOTATION_BYTES,
    annotation_key_problem,
    dns_subdomain_problem,
    label_value_problem,
    qualified_name_problem,
)
from kubetune.spec.models import (
    MAX_JOB_NAME_LENGTH,
    MAX_POD_ANNOTATION_VALUE,
    MAX_POD_ANNOTATIONS,
    QUEUE_LABEL,
    FineTuneJobSpec,
    reserved_key_problem,
)
from kubetune.spec.status import FailureReason, FineTuneJobStatus, Phase

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DNS_LABEL_MAX = 63


def document(metadata: dict[str, Any] | None = None, **kubernetes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "job"} if metadata is None else metadata,
        "spec": {"model": {"name": "m"}, "dataset": {"name": "glue"}, "kubernetes": kubernetes},
    }


def refused(doc: dict[str, Any]) -> list[str]:
    """The fields `kubetune validate` names for `doc` (empty: valid)."""
    try:
        parse_job(doc, for_cluster=True)
    except SpecError as error:
        return [p.field for p in error.problems]
    return []


def name_of_length(length: int) -> str:
    """A job name of `length` characters that is otherwise valid (letters, digits and '-')."""
    name = ("job-" + "0123456789" * 30)[:length]
    return name[:-1] + "z" if name.endswith("-") else name


def test_every_name_length_up_to_the_limit_is_accepted_and_every_longer_one_refused() -> None:
    for length in range(1, 262):
        name = name_of_length(length)
        assert len(name) == length
        fields = refused(document({"name": name}))
        assert fields == ([] if length <= MAX_JOB_NAME_LENGTH else ["metadata.name"]), (length, fields)
    for bad in ("1job", "job.v2", "Job", "job-", "-job", "jöb", "job_1", ""):
        assert refused(document({"name": bad})) == ["metadata.name"], bad


def test_every_child_of_the_longest_name_fits_kubernetes_rules() -> None:
    """The worst case: a 51-character name, 1024 nodes (worker index 1023), progress RBAC, a queue."""
    name = name_of_length(MAX_JOB_NAME_LENGTH)
    job = JobRef(name, "a" * DNS_LABEL_MAX, "uid")
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"name": "m"},
            "dataset": {"name": "glue"},
            "distribution": {"nodes": 1024},
            "output": {"ephemeral": True},
        }
    )
    children = build_job_children(job, spec)
    assert {c["kind"] for c in children} == {"Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"}
    pods = [build_worker_pod(WorkerContext(job, spec, index, 0, "img"), 1) for index in (0, 1023)]
    workload = build_workload(job, pods[0], 1024, "team-a", None)
    for child in [*children, *pods, workload]:
        assert dns_subdomain_problem(child["metadata"]["name"]) is None, child["metadata"]["name"]
        for key, value in child["metadata"]["labels"].items():
            assert qualified_name_problem(key) is None and label_value_problem(value) is None, (key, value)
    for pod in pods:  # hostnames and the Service name are DNS labels (the Service's must start with a letter)
        for label in (pod["metadata"]["name"], pod["spec"]["hostname"], pod["spec"]["subdomain"]):
            assert len(label) <= DNS_LABEL_MAX and label[0].isalpha(), label
    assert len(pods[1]["spec"]["hostname"]) == DNS_LABEL_MAX
    assert len(workload_name(name)) <= DNS_LABEL_MAX
    main = names.main_address(name, job.namespace)
    assert len(main) <= 253 and all(0 < len(part) <= DNS_LABEL_MAX for part in main.split("."))


def test_a_job_for_the_cluster_needs_a_name_or_a_generate_name_that_makes_a_valid_one() -> None:
    assert refused(document({})) == ["metadata.name"]
    assert refused(document({"labels": {"a": "b"}})) == ["metadata.name"]
    parse_job(document({}))  # `kubetune run` names it finetune
    assert refused(document({"generateName": "job-"})) == []
    assert refused(document({"generateName": "j" * 46})) == []
    for bad in ("j" * 47, "Job-", "1job-", "job.v2-", "jöb-"):
        assert refused(document({"generateName": bad})) == ["metadata"], bad
    # Beside a name it is ignored, but the API server still checks it as a DNS subdomain's start.
    assert refused(document({"name": "job", "generateName": "job.v2-"})) == []
    assert refused(document({"name": "job", "generateName": "Job-"})) == ["metadata"]
    # as apimachinery's maskTrailingDash masks it: the last two characters become 'a', a lone '-' is not masked
    assert refused(document({"name": "job", "generateName": "a..-"})) == []
    assert refused(document({"name": "job", "generateName": "a-.-"})) == []
    assert refused(document({"name": "job", "generateName": "-"})) == ["metadata"]


def test_the_jobs_own_labels_and_annotations_follow_the_api_servers_rules() -> None:
    assert (
        refused(document({"name": "j", "labels": {"team": "nlp", "example.com/tier": "a_b.c-1", "e": ""}}))
        == []
    )
    for labels in ({"a/b/c": "x"}, {"/a": "x"}, {"a" * 64: "x"}, {"ok": "a b"}, {"ok": "a" * 64}, {"é": "x"}):
        assert refused(document({"name": "j", "labels": labels})) == ["metadata.labels"], labels
    assert refused(document({"name": "j", "labels": {"a": 1}})) == ["metadata.labels.a"]
    # Annotation keys are checked lowercased, as Go lowercases them: 'K' (the Kelvin sign) becomes 'k'.
    assert refused(document({"name": "j", "annotations": {"Example.COM/X": "v", "\u212aey": "v"}})) == []
    assert refused(document({"name": "j", "annotations": {"a b": "v"}})) == ["metadata.annotations"]
    big = {f"k{i}": "x" * 9000 for i in range(30)}  # 270 kB together
    assert refused(document({"name": "j", "annotations": big})) == ["metadata.annotations"]


def test_what_the_pods_get_from_spec_kubernetes_is_checked_where_it_enters() -> None:
    assert (
        refused(document(labels={"team": "nlp"}, annotations={"k8s.v1.cni.cncf.io/networks": "[{}]"})) == []
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"labels": {"a b": "x"}}, "spec.kubernetes.labels"),
        ({"labels": {"kubetune.io/role": "x"}}, "spec.kubernetes.labels"),
        ({"labels": {"team": "-x"}}, "spec.kubernetes.labels.team"),
        ({"annotations": {"\u212aey": "v"}}, "spec.kubernetes.annotations"),  # ASCII only: as the CEL rule
        ({"annotations": {"KUEUE.x-k8s.io/pod-group-name": "g"}}, "spec.kubernetes.annotations"),
        ({"annotations": {"a": "x" * (MAX_POD_ANNOTATION_VALUE + 1)}}, "spec.kubernetes.annotations.a"),
        (
            {"annotations": {f"k{i}": "" for i in range(MAX_POD_ANNOTATIONS + 1)}},
            "spec.kubernetes.annotations",
        ),
        ({"nodeSelector": {"pool": "a b"}}, "spec.kubernetes.nodeSelector.pool"),
        ({"nodeSelector": {"a/b/c": "x"}}, "spec.kubernetes.nodeSelector"),
        ({"env": {"A=B": "1"}}, "spec.kubernetes.env"),
        ({"env": {"": "1"}}, "spec.kubernetes.env"),
        ({"env": {"PATH\u00e9": "1"}}, "spec.kubernetes.env"),
        ({"secretEnv": {"A\tB": {"name": "s"}}}, "spec.kubernetes.secretEnv"),
        ({"secretEnv": {"A": {"name": "Bad_Name"}}}, "spec.kubernetes.secretEnv.A.name"),
        ({"secretEnv": {"A": {"name": "s", "key": "a/b"}}}, "spec.kubernetes.secretEnv.A.key"),
        # (found by the fuzz: Kubernetes refuses a Secret key '.', '..' or starting with '..' in a pod)
        ({"secretEnv": {"A": {"name": "s", "key": "."}}}, "spec.kubernetes.secretEnv.A.key"),
        ({"hfTokenSecret": {"name": "s", "key": "..data"}}, "spec.kubernetes.hfTokenSecret.key"),
        ({"envFromSecrets": ["ok", "not ok"]}, "spec.kubernetes.envFromSecrets[1]"),
        ({"serviceAccountName": "Me"}, "spec.kubernetes.serviceAccountName"),
        ({"priorityClassName": "high priority"}, "spec.kubernetes.priorityClassName"),
        ({"hfTokenSecret": {"name": "hf_token"}}, "spec.kubernetes.hfTokenSecret.name"),
    ]
    for kubernetes, field in cases:
        assert refused(document(**kubernetes)) == [field], kubernetes
    # Kubernetes 1.34+ takes any printable ASCII but '=' in a variable name.
    assert refused(document(env={"1st.var-x": "1", "with space": "2"})) == []
    assert refused(document(secretEnv={"A": {"name": "s", "key": ".a..b"}})) == []


def test_the_annotation_bounds_keep_every_pod_under_the_api_servers_total() -> None:
    ours = len(names.ANNOTATION_SPEC_GENERATION) + len(str(2**63))
    assert (
        MAX_POD_ANNOTATIONS * (QUALIFIED_KEY_MAX + MAX_POD_ANNOTATION_VALUE) + ours <= TOTAL_ANNOTATION_BYTES
    )


def test_every_label_and_annotation_key_the_operator_sets_is_reserved() -> None:
    """So that no spec.kubernetes key can collide with one (the builders let ours win as well)."""
    job = JobRef("job", "ns", "uid")
    spec = FineTuneJobSpec.model_validate({"model": {"name": "m"}, "dataset": {"name": "glue"}})
    pod = build_worker_pod(WorkerContext(job, spec, 0, 0, "img"), 1)
    objects = [*build_job_children(job, spec), pod, build_workload(job, pod, 1, "q", None)]
    keys = {k for o in objects for k in [*o["metadata"]["labels"], *o["metadata"].get("annotations", {})]}
    assert keys and all(reserved_key_problem(key) for key in keys), [
        k for k in keys if not reserved_key_problem(k)
    ]
    assert reserved_key_problem(QUEUE_LABEL) and reserved_key_problem("app.kubernetes.io/part-of") is None


def test_a_queue_label_that_cannot_name_a_local_queue_fails_the_job_naming_the_label() -> None:
    """The API server accepts any label value, but Kueue's schema refuses a Workload whose queueName is not a
    DNS subdomain: the operator would retry its create for ever. `validate` and the planner refuse it."""
    doc = document({"name": "job", "labels": {QUEUE_LABEL: "Team_A"}})
    assert refused(doc) == ["metadata.labels"]
    job = ObservedJob(
        name="job",
        namespace="ns",
        uid="uid",
        generation=1,
        creation_time=NOW,
        spec=copy.deepcopy(doc["spec"]),
        status=FineTuneJobStatus(),
        labels={QUEUE_LABEL: "Team_A"},
    )
    result = plan(job, [], NOW, PlanOptions(kueue=True))
    assert result.status.phase == Phase.FAILED
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == FailureReason.INVALID_SPEC
    assert f"metadata.labels[{QUEUE_LABEL}] is 'Team_A'" in (result.status.message or "")
    assert not result.ensure_workload and not result.create_workers
    valid = plan(dataclasses.replace(job, labels={QUEUE_LABEL: "team-a"}), [], NOW, PlanOptions(kueue=True))
    assert valid.status.phase == Phase.QUEUED and valid.ensure_workload


def test_the_helpers_agree_with_kubernetes_on_edge_cases() -> None:
    assert qualified_name_problem("a" * 63) is None and qualified_name_problem("a" * 64)
    assert qualified_name_problem(("a" * 63 + ".") * 3 + "a" * 61 + "/x") is None  # a 253-character prefix
    assert qualified_name_problem(("a" * 63 + ".") * 3 + "a" * 62 + "/x")
    assert qualified_name_problem("example.com/") and qualified_name_problem("x/y/z")
    assert annotation_key_problem("\u0130d") is None  # Go: 'İ' lowercases to 'i'
    assert annotation_key_problem("\u0130d", ascii_only=True)
    assert label_value_problem("") is None and label_value_problem("a-") and label_value_problem("a\n")
    assert dns_subdomain_problem("a" * 253) is None and dns_subdomain_problem("a" * 254)
    assert (
        dns_subdomain_problem("a.b") is None and dns_subdomain_problem("a..b") and dns_subdomain_problem("A")
    )


def test_a_spec_too_large_for_its_config_map_fails_the_job_instead_of_a_refused_config_map() -> None:
    """A FineTuneJob may hold up to etcd's 1.5 MiB, its ConfigMap 1 MiB (the spec as YAML is in it): the
    ConfigMap of a job with 1.1 MB of environment would be refused at every reconcile."""

    def planned(env_bytes: int) -> Any:
        spec = document(env={"BIG": "x" * env_bytes})["spec"]
        job = ObservedJob("job", "ns", "uid", 1, NOW, spec, FineTuneJobStatus())
        return plan(job, [], NOW)

    large = planned(1_100_000)
    assert large.status.phase == Phase.FAILED and not large.create_workers
    assert "spec: the job's files" in (large.status.message or "")
    assert "ConfigMap job-config" in (large.status.message or "")
    assert planned(600_000).status.phase == Phase.PENDING
