"""The Helm chart, rendered by the real helm: lint-clean, valid Kubernetes, least privilege, safe defaults.

These tests need helm but no cluster; tests/deploy/test_install.py installs the chart into the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import CHART, NAMESPACE, RELEASE, Helm, find, kubernetes_version, one
from tests.deploy.dockerfile import parse_dockerfile, substitute

REPO = Path(__file__).resolve().parents[2]
FULLNAME = RELEASE  # the release name already contains the chart's name
NAMESPACED = {"watch": {"namespaces": ["team-a", "team-b"]}}
EVERYTHING_ON = {
    "replicaCount": 2,
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "p"}}},
    "kueue": {"enabled": True},
    "coscheduling": {"enabled": True},
}
VALUE_SETS = {"defaults": None, "namespaced": NAMESPACED, "everything-on": EVERYTHING_ON}


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD in the chart's crds/ folder."""
    schemas = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def _all_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for o in objects if o["kind"] in ("Role", "ClusterRole") for rule in o["rules"]]


# --- lint and schema validity ----------------------------------------------------------------------------------


def test_the_kueue_value_adds_the_flag_and_only_the_rules_of_the_integration(
    helm: Helm, values_dir: Path
) -> None:
    """Off by default; on, cluster mode adds KUEUE_RULES to the ClusterRole, namespaced mode puts Workloads into
    the watched namespaces' Roles and only the read of ResourceFlavors/PriorityClasses cluster-wide."""
    from kubetune.controller.rbac import KUEUE_RULES

    assert "--kueue" not in _operator_pod(helm.render(None, values_dir))["containers"][0]["args"]
    objects = helm.render({"kueue": {"enabled": True}}, values_dir)
    assert "--kueue" in _operator_pod(objects)["containers"][0]["args"]
    rules = one(objects, "ClusterRole", FULLNAME)["rules"]
    assert rules == _rules_file()["clusterMode"] + [dict(r) for r in KUEUE_RULES]
    namespaced = helm.render({**NAMESPACED, "kueue": {"enabled": True}}, values_dir)
    cluster_rules = one(namespaced, "ClusterRole", FULLNAME)["rules"]
    assert {"resourceflavors", "priorityclasses"} <= {r for rule in cluster_rules for r in rule["resources"]}
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in cluster_rules)
    for role in find(namespaced, "Role"):
        assert {"workloads", "workloads/status"} <= {r for rule in role["rules"] for r in rule["resources"]}


def test_the_coscheduling_value_adds_the_flag_and_podgroups_where_the_jobs_are_only(
    helm: Helm, values_dir: Path
) -> None:
    """Off by default; on, the ClusterRole (cluster mode) or each watched namespace's Role (namespaced mode)
    gains COSCHEDULING_RULES and nothing else; no cluster-wide right on PodGroups in namespaced mode."""
    from kubetune.controller.rbac import COSCHEDULING_RULES

    def podgroup_rules(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        return [r for o in find(objects, kind) for r in o["rules"] if "podgroups" in r["resources"]]

    defaults = helm.render(None, values_dir)
    assert "--coscheduling" not in _operator_pod(defaults)["containers"][0]["args"]
    assert podgroup_rules(defaults, "ClusterRole") == []
    objects = helm.render({"coscheduling": {"enabled": True}}, values_dir)
    assert "--coscheduling" in _operator_pod(objects)["containers"][0]["args"]
    rules = one(objects, "ClusterRole", FULLNAME)["rules"]
    assert rules == _rules_file()["clusterMode"] + [dict(r) for r in COSCHEDULING_RULES]
    namespaced = helm.render({**NAMESPACED, "coscheduling": {"enabled": True}}, values_dir)
    assert podgroup_rules(namespaced, "ClusterRole") == []
    roles = find(namespaced, "Role")
    assert len(roles) == 2
    for role in roles:
        assert [r for r in role["rules"] if "podgroups" in r["resources"]] == [dict(COSCHEDULING_RULES[0])]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict_passes(helm: Helm, values_dir: Path, values: dict | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values:
        path = values_dir / "lint-values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    result = helm.run(*args, check=False)
    assert result.returncode == 0, result.output
    assert "[WARNING]" not in result.output and "[ERROR]" not in result.output, result.output


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(
    helm: Helm, values_dir: Path, values: dict | None
) -> None:
    """Built-in kinds against kubernetes-validate's offline schemas (strict: unknown fields are errors) for
    the project's Kubernetes minor; the peering objects against their CRDs' schemas. ServiceMonitor's CRD
    belongs to the Prometheus Operator and is not shipped here: only its apiVersion is checked."""
    major, minor, _ = kubernetes_version().split(".")
    version = f"{major}.{minor}.0"
    crd_schemas = _crd_schemas()
    for obj in helm.render(values, values_dir):
        key = (obj["apiVersion"], obj["kind"])
        if key in crd_schemas:
            jsonschema.validate(obj, crd_schemas[key])
        elif obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_the_chart_crd_is_the_generated_one() -> None:
    """crds/ holds exactly what `kubetune crd` generates now (and what manifests/crd/ holds)."""
    from kubetune.crd import render_crd

    generated = render_crd()
    assert (CHART / "crds" / "finetunejobs.kubetune.io.yaml").read_text() == generated, (
        "charts/kubetune/crds is stale: cp manifests/crd/finetunejobs.kubetune.io.yaml charts/kubetune/crds/"
    )
    assert (REPO / "manifests" / "crd" / "finetunejobs.kubetune.io.yaml").read_text() == generated


# --- values.schema.json ----------------------------------------------------------------------------------------

WRONG_VALUES = [
    ("replicaCount=-1", "replicaCount", "minimum"),
    ("replicas=2", "replicas", "additional"),
    ("image.tag=bad tag!", "image/tag", "pattern"),
    ("image.pullPolicy=Sometimes", "pullPolicy", "Always"),
    ("logLevel=loud", "logLevel", "debug"),
    ("watch.namespaces={Team_A}", "watch/namespaces/0", "pattern"),
    ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot", "true"),
    ("podSecurityContext.runAsUser=0", "runAsUser", "minimum"),
    ("securityContext.privileged=true", "privileged", "false"),
    ("securityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation", "false"),
    ("ports.health=80", "ports/health", "minimum"),
    ("resources.limits.memory=lots", "resources/limits/memory", "pattern"),
]


@pytest.mark.parametrize(("setting", "path", "hint"), WRONG_VALUES, ids=[w[0] for w in WRONG_VALUES])
def test_values_schema_rejects_wrong_values_naming_the_key(
    helm: Helm, values_dir: Path, setting: str, path: str, hint: str
) -> None:
    result = helm.run(*helm.template_args(None, values_dir, "--set", setting), check=False)
    assert result.returncode != 0, f"--set {setting} was accepted"
    assert "values don't meet the specifications of the schema" in result.output, result.output
    assert path in result.output and hint in result.output, result.output


def test_equal_health_and_metrics_ports_are_refused_with_the_fix(helm: Helm, values_dir: Path) -> None:
    result = helm.run(*helm.template_args(None, values_dir, "--set", "ports.health=9090"), check=False)
    assert result.returncode != 0
    assert "ports.health and ports.metrics are both 9090: give them different ports" in result.output


# --- RBAC: exactly what the operator uses ----------------------------------------------------------------------


def _rules_file() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())
    return rules


def test_the_chart_rules_are_derived_from_the_operators_own_list() -> None:
    """files/operator-rules.yaml is what tests.deploy.manifests derives from OPERATOR_RULES, and together the
    two modes' rules cover every resource and verb of that list (nothing the operator calls is missing)."""
    from kubetune.controller.rbac import OPERATOR_RULES

    from tests.deploy.manifests import RULES_FILE, render_rules

    assert RULES_FILE.read_text() == render_rules(), "stale: run python -m tests.deploy.manifests"
    rules = _rules_file()

    def grants(rule_list: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        return {
            (group, resource, verb)
            for rule in rule_list
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }

    wanted = grants(OPERATOR_RULES)
    namespaced_mode = grants(rules["namespacedMode"]["namespaced"] + rules["namespacedMode"]["cluster"])
    assert grants(rules["clusterMode"]) | namespaced_mode == wanted
    # Each mode leaves out only what kopf never calls in that mode.
    assert {r for _, r, _ in wanted - grants(rules["clusterMode"])} == {"kopfpeerings", "namespaces"}
    assert {r for _, r, _ in wanted - namespaced_mode} == {"clusterkopfpeerings"}


def test_cluster_mode_grants_everything_through_one_cluster_role(helm: Helm, values_dir: Path) -> None:
    objects = helm.render(None, values_dir)
    role = one(objects, "ClusterRole", FULLNAME)
    assert role["rules"] == _rules_file()["clusterMode"]
    binding = one(objects, "ClusterRoleBinding", FULLNAME)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert not find(objects, "Role") and not find(objects, "RoleBinding")
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "kubetune"
    args = _operator_pod(objects)["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--namespace")]


def test_namespaced_mode_grants_job_rights_only_in_the_watched_namespaces(
    helm: Helm, values_dir: Path
) -> None:
    """A Role per watched namespace; cluster-wide only kopf's CRD and namespace reads (nothing namespaced)."""
    objects = helm.render(NAMESPACED, values_dir)
    rules = _rules_file()["namespacedMode"]
    assert one(objects, "ClusterRole", FULLNAME)["rules"] == rules["cluster"]
    cluster_resources = {r for rule in rules["cluster"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in rules["cluster"])
    assert {r["metadata"]["namespace"] for r in find(objects, "Role")} == {"team-a", "team-b"}
    for role in find(objects, "Role"):
        assert role["rules"] == rules["namespaced"]
    for binding in find(objects, "RoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert {p["metadata"]["namespace"] for p in find(objects, "KopfPeering")} == {"team-a", "team-b"}
    assert not find(objects, "ClusterKopfPeering")
    args = _operator_pod(objects)["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_no_rule_reads_secrets_or_uses_wildcards_or_escalates(
    helm: Helm, values_dir: Path, values: dict | None
) -> None:
    for rule in _all_rules(helm.render(values, values_dir)):
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "secrets" not in rule["resources"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        if {"roles", "rolebindings", "serviceaccounts"} & set(rule["resources"]):
            assert not {"list", "watch"} & set(rule["verbs"]), f"the operator never lists these: {rule}"


# --- the operator StatefulSet -----------------------------------------------------------------------------------


def _operator_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    return spec


def test_the_operator_runs_non_root_read_only_without_privileges_as_the_image_user(
    helm: Helm, values_dir: Path
) -> None:
    """Pod Security Standard 'restricted', and the uid is the operator image's USER."""
    pod = _operator_pod(helm.render(None, values_dir))
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    dockerfile = parse_dockerfile(REPO / "Dockerfile")
    user = substitute(dockerfile.stage("operator").all("USER")[-1].text, dockerfile.global_args)
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # the one writable place (HOME=/tmp in the image)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_operator_command_line_is_accepted_by_kubetune_operator(
    helm: Helm, values_dir: Path, values: dict | None
) -> None:
    """The StatefulSet's args parse with the real CLI (the image's ENTRYPOINT is `kubetune`), once Kubernetes
    has expanded $(POD_INDEX) from the pod-index label."""
    from kubetune.cli import build_parser

    (container,) = _operator_pod(helm.render(values, values_dir))["containers"]
    args = build_parser().parse_args([a.replace("$(POD_INDEX)", "1") for a in container["args"]])
    assert args.command == "operator"
    assert args.priority == 1 and args.peering == "kubetune"
    assert args.namespace == (values or {}).get("watch", {}).get("namespaces", [])


def test_the_default_trainer_image_is_the_charts_version_and_reaches_the_operator(
    helm: Helm, values_dir: Path
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (container,) = _operator_pod(helm.render(None, values_dir))["containers"]
    assert f"--image=ghcr.io/kubetune/trainer:{chart['appVersion']}" in container["args"]
    assert container["image"] == f"ghcr.io/kubetune/operator:{chart['appVersion']}"
    digest = "sha256:" + "a" * 64
    (pinned,) = _operator_pod(helm.render({"image": {"digest": digest}}, values_dir))["containers"]
    assert pinned["image"] == f"ghcr.io/kubetune/operator@{digest}"


def test_two_replicas_peer_through_kopf_each_with_its_own_priority(helm: Helm, values_dir: Path) -> None:
    """kopf pauses every operator that sees a live peer of equal priority, so each replica's priority is its
    StatefulSet pod index: one works (the highest), the others stand by."""
    objects = helm.render(EVERYTHING_ON, values_dir)
    workload = one(objects, "StatefulSet")
    assert workload["spec"]["replicas"] == 2
    assert workload["spec"]["podManagementPolicy"] == "Parallel"
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["POD_ID"] == "metadata.name"
    assert env["POD_INDEX"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert "--priority=$(POD_INDEX)" in container["args"]
    assert "--peering=kubetune" in container["args"]
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "kubetune"
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == workload["spec"]["selector"]
    assert not find(helm.render(None, values_dir), "PodDisruptionBudget")  # one replica: nothing to keep


def test_probes_and_service_point_at_the_health_and_metrics_ports(helm: Helm, values_dir: Path) -> None:
    objects = helm.render(EVERYTHING_ON, values_dir)
    (container,) = _operator_pod(objects)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert f"--health-port={ports['health']}" in container["args"]
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = one(objects, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "health": "health",
        "metrics": "metrics",
    }
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "p"
    without_metrics = helm.render({"metrics": {"enabled": False}}, values_dir)
    assert [p["name"] for p in one(without_metrics, "Service")["spec"]["ports"]] == ["health"]
    assert not find(without_metrics, "ServiceMonitor")


def test_the_helm_test_hook_asks_the_operators_health_endpoint(helm: Helm, values_dir: Path) -> None:
    objects = helm.render(None, values_dir)
    (test_pod,) = [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    script = test_pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:8080/healthz" in script
    assert test_pod["spec"]["automountServiceAccountToken"] is False
    assert test_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert not find(helm.render({"test": {"enabled": False}}, values_dir), "Pod")


def test_the_chart_and_the_operator_agree_on_the_trainer_image_repository() -> None:
    """The operator's built-in fallback and the chart's default name the same repository (the chart always
    passes --image, so the fallback only matters for `kubetune operator` run by hand)."""
    from kubetune.controller.children import DEFAULT_IMAGE

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    repository = DEFAULT_IMAGE.split("@")[0].rsplit(":", 1)[0]
    assert repository == values["trainer"]["image"]["repository"]
