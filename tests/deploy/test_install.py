"""Given the real test control plane, `helm install` of charts/kubetune gives an operator whose own
ServiceAccount is enough to run a FineTuneJob to Succeeded and not enough to read Secrets or act outside its
namespaces; `helm upgrade` and `helm uninstall` leave nothing behind but the CRDs; the plain manifests and the
examples are accepted by the API server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.events import EventKind, JobSummary

from tests.deploy.chart import CHART, REPO, Helm
from tests.deploy.install import ChartOperator, Release
from tests.deploy.manifests import CLUSTER_SCOPED, chart_rules
from tests.kube.harness import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

POOL_LABEL, POOL = "kubetune.test/pool", "deploy"
TRAINER = {"repository": "kubetune/trainer", "tag": "test"}
CRDS = ("finetunejobs.kubetune.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")
GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"


@pytest.fixture(scope="module")
def deploy_pool(kube_cluster: Any) -> list[str]:
    """Two KWOK nodes with 4 GPUs each, for these tests' jobs only."""
    if not kube_cluster.has_nodes:
        pytest.skip("needs KWOK nodes (hack/cluster/build.sh)")
    names: list[str] = kube_cluster.add_gpu_nodes(2, gpus=4, labels={POOL_LABEL: POOL})
    kube_cluster.wait_for_nodes_ready()
    return names


@pytest.fixture
def release(kube_cluster: Any, helm: Helm, tmp_path: Path) -> Iterator[Release]:
    """A not-yet-installed release with a unique name, in its own namespace; uninstalled afterwards."""
    suffix = uuid.uuid4().hex[:6]
    namespace = f"kubetune-system-{suffix}"
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    release = Release(helm, kube_cluster.kubeconfig, f"kt-{suffix}", namespace, tmp_path / "values.yaml")
    yield release
    release.uninstall()
    core.delete_namespace(namespace, propagation_policy="Background")


def _values(release: Release, **extra: Any) -> dict[str, Any]:
    """Chart values for the test cluster: a peering name of its own (ClusterKopfPeerings are cluster-wide)."""
    return {"peering": {"name": release.name}, "trainer": {"image": TRAINER}, **extra}


def _job(name: str, nodes: int = 2) -> str:
    document = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "prajjwal1/bert-tiny"},
            "dataset": {"name": "glue", "config": "sst2", "textFields": ["sentence"]},
            "distribution": {"nodes": nodes},
            # Workers on KWOK nodes run nothing and write no output: their emptyDirs are accepted knowingly.
            "output": {"ephemeral": True},
            "kubernetes": {"nodeSelector": {POOL_LABEL: POOL}},
        },
    }
    return yaml.safe_dump(document)


def _status(kube_cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    job: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    result: dict[str, Any] = job.get("status") or {}
    return result


def _wait_phase(
    kube_cluster: Any, namespace: str, name: str, phase: str, timeout: float = 45
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = _status(kube_cluster, namespace, name)
        return current if current.get("phase") == phase else None

    try:
        return wait_for(reached, timeout, f"FineTuneJob {name} to be {phase}")
    except Exception as error:
        current = json.dumps(_status(kube_cluster, namespace, name), indent=1)
        raise AssertionError(f"{error}; status: {current}") from None


def _running_workers(kube_cluster: Any, namespace: str, name: str, count: int) -> list[Any]:
    core = client.CoreV1Api(kube_cluster.api_client())

    def all_running() -> list[Any] | None:
        pods: list[Any] = core.list_namespaced_pod(
            namespace, label_selector=f"kubetune.io/job-name={name}"
        ).items
        pods = [p for p in pods if not p.metadata.deletion_timestamp]
        return pods if len(pods) == count and all(p.status.phase == "Running" for p in pods) else None

    return sorted(
        wait_for(all_running, 45, f"{count} running workers of {name}"), key=lambda p: p.metadata.name
    )


def _can(kubectl: Any, release: Release, verb: str, resource: str, namespace: str | None = None) -> bool:
    """`kubectl auth can-i` as the chart's ServiceAccount (admin impersonates it)."""
    scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    resource, _, subresource = resource.partition("/")
    if subresource:
        scope.append(f"--subresource={subresource}")
    result = kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        f"--as=system:serviceaccount:{release.namespace}:{release.fullname}",
        *scope,
        check=False,
        namespace=namespace,
    )
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {result.stdout}{result.stderr}"
    return answer == "yes"


def _service_account_kubeconfig(
    kube_cluster: Any, kubectl: Any, release: Release, verb: str, resource: str, namespace: str
) -> Path:
    """A kubeconfig with a token of the chart's ServiceAccount, once the API server's authorizer lets it
    `verb` `resource` (it sees new bindings a moment after they are created)."""
    wait_for(
        lambda: _can(kubectl, release, verb, resource, namespace) or None,
        30,
        "the chart's RBAC to take effect",
    )
    path: Path = kube_cluster.kubeconfig_for_service_account(release.namespace, release.fullname)
    return path


# --- the operator works with the chart's credentials ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["namespaced", "cluster"])
def test_the_charts_operator_runs_a_job_to_succeeded_with_only_its_service_account(
    kube_cluster: Any,
    kube_namespace: str,
    kubectl: Any,
    release: Release,
    deploy_pool: list[str],
    tmp_path: Path,
    mode: str,
) -> None:
    # Given the chart installed (namespaced mode: watching only the test's namespace)
    watch = {"watch": {"namespaces": [kube_namespace]}} if mode == "namespaced" else {}
    notes = release.install(_values(release, **watch))
    assert (
        "kubectl get finetunejobs -w" in notes and f"rollout status statefulset/{release.fullname}" in notes
    )

    # And its operator command running with a token of the chart's ServiceAccount, once the API server's
    # authorizer has seen the new bindings (a pod would take longer than that to start)
    kubeconfig = _service_account_kubeconfig(
        kube_cluster, kubectl, release, "watch", "finetunejobs.kubetune.io", kube_namespace
    )
    operator = ChartOperator(release.operator_container(), kubeconfig, tmp_path / "operator.log")
    operator.start()
    try:
        # When a FineTuneJob is applied and its workers run and end, rank 0 with its summary
        kubectl("apply", "-f", "-", input=_job("chart-job"))
        pods = _running_workers(kube_cluster, kube_namespace, "chart-job", 2)
        assert {p.spec.containers[0].image for p in pods} == {"kubetune/trainer:test"}  # the chart's default
        summary = JobSummary(
            outcome=EventKind.FINISHED,
            step=40,
            total_steps=40,
            epoch=1.0,
            train_loss=0.3,
            metrics={"eval_accuracy": 0.81},
        )
        kube_cluster.complete_pod(kube_namespace, "chart-job-worker-1", exit_code=0)
        kube_cluster.complete_pod(
            kube_namespace, "chart-job-worker-0", exit_code=0, message=summary.to_termination_message()
        )

        # Then the job Succeeded with the metrics, and the operator was never refused anything
        try:
            final = _wait_phase(kube_cluster, kube_namespace, "chart-job", "Succeeded")
        except AssertionError as error:
            raise AssertionError(f"{error}\noperator log:\n{operator.log()[-4000:]}") from None
        assert final["metrics"]["primary"] == "accuracy=0.81"
        row = kubectl("get", "finetunejobs", "chart-job").stdout.splitlines()[1]
        assert "Succeeded" in row and "accuracy=0.81" in row
        log = operator.log()
        # The API's refusals read "Forbidden" (reason) in kopf's and the client's errors alike. (The
        # cluster-wide operator also sees other tests' jobs whose namespaces are being deleted; the API
        # refuses new content there too, for that reason, not for RBAC.)
        refusals = [
            line
            for line in log.lower().splitlines()
            if "forbidden" in line and "because it is being terminated" not in line
        ]
        assert not refusals, "\n".join(refusals)[-4000:]
        assert "kubetune_" in operator.metrics()

        # And the `helm test` pod's check passes against this operator (its Service address made local)
        (test_pod,) = release.hooks()
        command = test_pod["spec"]["containers"][0]["command"]
        service = f"http://{release.fullname}.{release.namespace}.svc:8080"
        assert command[0] == "python" and service in command[-1]
        script = command[-1].replace(service, f"http://127.0.0.1:{operator.health_port}")
        check = subprocess.run(
            [sys.executable, *command[1:-1], script], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0 and "HTTP 200" in check.stdout, check.stdout + check.stderr
    finally:
        operator.stop()


# --- and can do nothing more ---------------------------------------------------------------------------------


def test_namespaced_mode_cannot_read_secrets_or_act_outside_its_namespaces(
    kube_cluster: Any, kube_namespace: str, kubectl: Any, release: Release
) -> None:
    release.install(_values(release, watch={"namespaces": [kube_namespace]}))
    # What the job needs, in the watched namespace
    for verb, resource in [
        ("create", "pods"),
        ("delete", "pods"),
        ("watch", "finetunejobs.kubetune.io"),
        ("patch", "finetunejobs.kubetune.io/status"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("patch", "kopfpeerings.kopf.dev"),
    ]:
        assert _can(kubectl, release, verb, resource, kube_namespace), f"cannot {verb} {resource}"
    # No Secret anywhere, nothing outside the watched namespace, no cluster-wide writes
    for namespace in (kube_namespace, release.namespace, "default"):
        assert not _can(kubectl, release, "get", "secrets", namespace)
        assert not _can(kubectl, release, "list", "secrets", namespace)
    for namespace in (release.namespace, "default", "kube-system"):
        for verb, resource in [("create", "pods"), ("list", "pods"), ("get", "finetunejobs.kubetune.io")]:
            assert not _can(kubectl, release, verb, resource, namespace), (
                f"can {verb} {resource} in {namespace}"
            )
    assert not _can(kubectl, release, "list", "pods")  # all namespaces
    assert not _can(kubectl, release, "patch", "clusterkopfpeerings.kopf.dev")
    for verb, resource in [
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "deployments.apps"),
        ("delete", "nodes"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io"),
        ("impersonate", "serviceaccounts"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
    ]:
        assert not _can(kubectl, release, verb, resource, kube_namespace), f"can {verb} {resource}"


def test_cluster_mode_acts_everywhere_but_still_reads_no_secrets(
    kube_cluster: Any, kube_namespace: str, kubectl: Any, release: Release
) -> None:
    release.install(_values(release))
    for namespace in (kube_namespace, "default"):
        assert _can(kubectl, release, "create", "pods", namespace)
        assert not _can(kubectl, release, "get", "secrets", namespace)
    assert _can(kubectl, release, "watch", "finetunejobs.kubetune.io")
    assert not _can(kubectl, release, "list", "secrets")
    assert not _can(kubectl, release, "list", "namespaces")  # kopf does not observe them cluster-wide
    assert not _can(kubectl, release, "create", "deployments.apps", "default")


def test_the_rules_split_by_scope_as_the_api_server_says(kube_cluster: Any, kubectl: Any) -> None:
    """CLUSTER_SCOPED (which decides what goes into a Role) agrees with discovery for every resource used."""
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster_wide = set(
        kube_cluster.kubectl("api-resources", "--namespaced=false", "-o", "name").stdout.split()
    )
    namespaced = set(kube_cluster.kubectl("api-resources", "--namespaced=true", "-o", "name").stdout.split())
    rules = chart_rules()
    used = rules["clusterMode"] + rules["namespacedMode"]["namespaced"] + rules["namespacedMode"]["cluster"]
    for rule in used:
        for resource in rule["resources"]:
            base = resource.split("/")[0]
            names = {f"{base}.{group}" if group else base for group in rule["apiGroups"]}
            expected = cluster_wide if base in CLUSTER_SCOPED else namespaced
            assert names <= expected, f"{names}: scope differs from CLUSTER_SCOPED"


# --- upgrade and uninstall ------------------------------------------------------------------------------------


def _release_objects(kube_cluster: Any, release: Release, namespaces: list[str]) -> list[str]:
    """Every object that still carries the release's instance label, as kind/namespace/name."""
    selector = f"app.kubernetes.io/instance={release.name}"
    found = []
    cluster_kinds = "clusterroles,clusterrolebindings,clusterkopfpeerings.kopf.dev"
    out = kube_cluster.kubectl("get", cluster_kinds, "-l", selector, "-o", "name").stdout.split()
    found += out
    namespaced_kinds = "statefulsets,pods,services,serviceaccounts,roles,rolebindings,kopfpeerings.kopf.dev"
    for namespace in namespaces:
        out = kube_cluster.kubectl(
            "get", namespaced_kinds, "-n", namespace, "-l", selector, "-o", "name"
        ).stdout
        found += [f"{namespace}/{name}" for name in out.split()]
    return found


def test_upgrade_to_namespaced_mode_with_two_replicas_then_uninstall_leaves_only_the_crds(
    kube_cluster: Any, kube_namespace: str, release: Release, deploy_pool: list[str]
) -> None:
    # Given a cluster-mode release
    release.install(_values(release))
    apps: Any = client.AppsV1Api(kube_cluster.api_client())
    rbac: Any = client.RbacAuthorizationV1Api(kube_cluster.api_client())
    assert rbac.read_cluster_role(release.fullname).rules[0].resources == ["finetunejobs"]

    # When it is upgraded to namespaced mode with two replicas
    release.upgrade(_values(release, replicaCount=2, watch={"namespaces": [kube_namespace]}))

    # Then the rights moved into the namespace, and each replica has its own peering priority
    role = rbac.read_namespaced_role(release.fullname, kube_namespace)
    assert {r for rule in role.rules for r in rule.resources} >= {"pods", "finetunejobs", "kopfpeerings"}
    cluster_role = rbac.read_cluster_role(release.fullname)
    assert {r for rule in cluster_role.rules for r in rule.resources} == {
        "customresourcedefinitions",
        "namespaces",
    }
    assert apps.read_namespaced_stateful_set(release.fullname, release.namespace).spec.replicas == 2
    core = client.CoreV1Api(kube_cluster.api_client())

    def two_indexed_pods() -> set[str] | None:
        pods: Any = core.list_namespaced_pod(
            release.namespace, label_selector="app.kubernetes.io/component=operator"
        )
        indexes = {p.metadata.labels.get("apps.kubernetes.io/pod-index", "") for p in pods.items}
        return indexes if indexes == {"0", "1"} else None

    wait_for(two_indexed_pods, 60, "two operator pods labelled with pod indexes 0 and 1")
    with pytest.raises(ApiException):  # the cluster-mode peering object went away with the mode
        client.CustomObjectsApi(kube_cluster.api_client()).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", release.name
        )

    # When it is uninstalled, nothing of it remains but the CRDs (Helm never deletes crds/)
    release.uninstall()

    def gone() -> bool | None:
        return (
            True if not _release_objects(kube_cluster, release, [release.namespace, kube_namespace]) else None
        )

    try:
        wait_for(gone, 60, "every object of the release to be deleted")
    except Exception:
        pytest.fail(
            f"left behind: {_release_objects(kube_cluster, release, [release.namespace, kube_namespace])}"
        )
    remaining = kube_cluster.kubectl("get", "crds", "-o", "name").stdout.split()
    for crd in CRDS:
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd}" in remaining


# --- the plain manifests and the examples ---------------------------------------------------------------------


def test_plain_manifests_install_and_the_examples_pass_the_api_servers_validation(
    kube_cluster: Any, kube_namespace: str, kubectl: Any
) -> None:
    manifests = REPO / "manifests"
    kube_cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(manifests / "crd"),
        "-f",
        str(manifests / "operator" / "kopf-peering-crds.yaml"),
    )
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{c}" for c in CRDS])
    plain = ["-f", str(manifests / "rbac"), "-f", str(manifests / "operator" / "operator.yaml")]
    kube_cluster.kubectl("apply", *plain)
    try:
        apps = client.AppsV1Api(kube_cluster.api_client())
        workload: Any = apps.read_namespaced_stateful_set("kubetune", "kubetune-system")
        assert workload.spec.template.spec.service_account_name == "kubetune"
    finally:
        kube_cluster.kubectl("delete", "--wait=false", "--ignore-not-found", *plain)
    for example in [*sorted((manifests / "examples").glob("*.yaml")), manifests / "kind" / "offline.yaml"]:
        result = kubectl("apply", "--dry-run=server", "-f", str(example), check=False)
        assert result.returncode == 0, f"{example.name}: {result.stderr}"


# --- two replicas ---------------------------------------------------------------------------------------------


def test_two_replicas_one_works_the_other_stands_by_and_takes_over(
    kube_cluster: Any,
    kube_namespace: str,
    kubectl: Any,
    release: Release,
    deploy_pool: list[str],
    tmp_path: Path,
) -> None:
    """Replicas 0 and 1 of the chart's StatefulSet, run as their pods would (priority = pod index): replica 1
    works, replica 0 pauses; when replica 1 stops, replica 0 resumes and finishes the job."""
    release.install(_values(release, replicaCount=2, watch={"namespaces": [kube_namespace]}))
    kubeconfig = _service_account_kubeconfig(
        kube_cluster, kubectl, release, "patch", "kopfpeerings.kopf.dev", kube_namespace
    )
    container = release.operator_container()
    replicas = [ChartOperator(container, kubeconfig, tmp_path / f"operator-{i}.log", index=i) for i in (1, 0)]
    for replica in replicas:
        replica.start()
    active, standby = replicas
    try:
        # Replica 0 sees the higher-priority peer and pauses; replica 1 runs the job
        wait_for(lambda: "Pausing operations in favour of" in standby.log() or None, 30, "replica 0 to pause")
        assert "Pausing" not in active.log()
        kubectl("apply", "-f", "-", input=_job("ha-job"))
        _running_workers(kube_cluster, kube_namespace, "ha-job", 2)
        _wait_phase(kube_cluster, kube_namespace, "ha-job", "Running")

        # When replica 1 stops, replica 0 resumes and carries the job to the end
        active.stop()
        wait_for(lambda: "Resuming operations" in standby.log() or None, 30, "replica 0 to resume")
        kube_cluster.complete_pod(kube_namespace, "ha-job-worker-1", exit_code=0)
        summary = JobSummary(
            outcome=EventKind.FINISHED, step=10, total_steps=10, metrics={"eval_accuracy": 0.7}
        )
        kube_cluster.complete_pod(
            kube_namespace, "ha-job-worker-0", exit_code=0, message=summary.to_termination_message()
        )
        final = _wait_phase(kube_cluster, kube_namespace, "ha-job", "Succeeded")
        assert final["metrics"]["primary"] == "accuracy=0.7"
        pods: Any = client.CoreV1Api(kube_cluster.api_client()).list_namespaced_pod(
            kube_namespace, label_selector="kubetune.io/job-name=ha-job"
        )
        assert sorted(p.metadata.name for p in pods.items) == [
            "ha-job-worker-0",
            "ha-job-worker-1",
        ]  # no duplicates
    finally:
        for replica in replicas:
            replica.stop()


def test_replicas_of_equal_priority_would_all_pause_which_is_why_each_gets_its_pod_index(
    kube_cluster: Any, kube_namespace: str, kubectl: Any, release: Release, tmp_path: Path
) -> None:
    """The reason the chart is a StatefulSet: two peers with the same kopf priority pause each other, so a
    Deployment (identical pods) with two replicas would stop all work."""
    release.install(_values(release, replicaCount=2, watch={"namespaces": [kube_namespace]}))
    kubeconfig = _service_account_kubeconfig(
        kube_cluster, kubectl, release, "patch", "kopfpeerings.kopf.dev", kube_namespace
    )
    container = release.operator_container()
    twins = [
        ChartOperator(container, kubeconfig, tmp_path / f"twin-{n}.log", index=0, pod_id=f"twin-{n}")
        for n in (1, 2)
    ]
    try:
        for twin in twins:
            twin.start()
        for twin in twins:

            def paused(twin: ChartOperator = twin) -> bool | None:
                return "Pausing all operators, including self" in twin.log() or None

            wait_for(paused, 30, f"{twin.pod_id} to pause")
    finally:
        for twin in twins:
            twin.stop()


def test_the_kind_job_schedules_on_cpu_only_nodes_labelled_like_the_kind_workers(
    kube_cluster: Any, kube_namespace: str, kubectl: Any, release: Release, tmp_path: Path
) -> None:
    """manifests/kind/offline.yaml with the chart's kind values: two workers, no GPU requested, on nodes
    without GPUs that carry the kind workers' label, running the CPU trainer image."""
    if not kube_cluster.has_nodes:
        pytest.skip("needs KWOK nodes (hack/cluster/build.sh)")
    kind = yaml.safe_load((REPO / "manifests" / "kind" / "cluster.yaml").read_text())
    labels = next(n["labels"] for n in kind["nodes"] if n["role"] == "worker")
    cpu_nodes = kube_cluster.add_gpu_nodes(2, gpus=0, labels=labels, cpu="4", memory="8Gi")
    kube_cluster.wait_for_nodes_ready()
    kind_values = yaml.safe_load((REPO / "manifests" / "kind" / "values.yaml").read_text())
    release.install(
        _values(release, watch={"namespaces": [kube_namespace]}) | {"trainer": kind_values["trainer"]}
    )
    kubeconfig = _service_account_kubeconfig(
        kube_cluster, kubectl, release, "watch", "finetunejobs.kubetune.io", kube_namespace
    )
    operator = ChartOperator(release.operator_container(), kubeconfig, tmp_path / "operator.log")
    operator.start()
    try:
        kubectl("apply", "-f", str(REPO / "manifests" / "kind" / "offline.yaml"))
        pods = _running_workers(kube_cluster, kube_namespace, "paraphrase-minilm", 2)
        assert {p.spec.node_name for p in pods} <= set(cpu_nodes)
        for pod in pods:
            (container,) = pod.spec.containers
            assert container.image.endswith(":0.1.0-cpu")
            assert not any("gpu" in name for name in (container.resources.limits or {}))
            assert container.working_dir is None  # the image's WORKDIR, where the example's data lies
    finally:
        operator.stop()
        kubectl("delete", "finetunejob", "paraphrase-minilm", "--wait=false", check=False)


def test_without_the_pods_rule_the_charts_operator_is_refused_and_creates_nothing(
    kube_cluster: Any,
    kube_namespace: str,
    kubectl: Any,
    release: Release,
    deploy_pool: list[str],
    tmp_path: Path,
) -> None:
    """The converse of the Succeeded test, so that its "never refused" check is known to bite: with the pods
    rule taken out of the chart's Role, the API refuses the operator, and the log says so."""
    release.install(_values(release, watch={"namespaces": [kube_namespace]}))
    rbac: Any = client.RbacAuthorizationV1Api(kube_cluster.api_client())
    role = rbac.read_namespaced_role(release.fullname, kube_namespace)
    role.rules = [rule for rule in role.rules if "pods" not in rule.resources]
    rbac.replace_namespaced_role(release.fullname, kube_namespace, role)
    wait_for(
        lambda: (not _can(kubectl, release, "create", "pods", kube_namespace)) or None,
        30,
        "the rule to be gone",
    )
    kubeconfig = kube_cluster.kubeconfig_for_service_account(release.namespace, release.fullname)
    operator = ChartOperator(release.operator_container(), kubeconfig, tmp_path / "operator.log")
    operator.start()
    try:
        kubectl("apply", "-f", "-", input=_job("refused"))
        wait_for(lambda: "forbidden" in operator.log().lower() or None, 30, "the operator to be refused")
        pods = client.CoreV1Api(kube_cluster.api_client()).list_namespaced_pod(
            kube_namespace, label_selector="kubetune.io/job-name=refused"
        )
        assert not pods.items
    finally:
        operator.stop()
