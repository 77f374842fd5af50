"""manifests/: the plain RBAC and operator files are the chart's rendering; the examples and kind files are
valid for the chart, the CRD and `kubetune validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubetune.spec import load_jobs

from tests.deploy.chart import CHART, Helm, one
from tests.deploy.manifests import MANIFESTS, render_manifests

EXAMPLES = sorted((MANIFESTS / "examples").glob("*.yaml"))


def test_plain_manifests_are_the_chart_rendered(helm: Helm) -> None:
    """What `python -m tests.deploy.manifests` would write is what is committed."""
    for path, text in render_manifests(helm).items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(MANIFESTS.parent)} is stale: run python -m tests.deploy.manifests"
        )


def test_plain_manifests_hold_no_helm_only_objects() -> None:
    for path in (MANIFESTS / "rbac").glob("*.yaml"), (MANIFESTS / "operator").glob("*.yaml"):
        for file in path:
            for obj in filter(None, yaml.safe_load_all(file.read_text())):
                labels = obj["metadata"].get("labels", {})
                assert "helm.sh/chart" not in labels, file
                assert labels.get("app.kubernetes.io/managed-by") != "Helm", file
                assert "helm.sh/hook" not in obj["metadata"].get("annotations", {}), file


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_job_passes_kubetune_validate(path: Path) -> None:
    assert load_jobs(path)


def test_the_kind_values_install_the_cpu_trainer_from_loaded_images(helm: Helm, values_dir: Path) -> None:
    """manifests/kind/values.yaml passes the chart's schema and the tags match the kind README's builds."""
    values = yaml.safe_load((MANIFESTS / "kind" / "values.yaml").read_text())
    objects = helm.render(values, values_dir)
    (container,) = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == "Never"  # loaded with `kind load docker-image`
    readme = (MANIFESTS / "kind" / "README.md").read_text()
    trainer = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--image="))
    assert trainer.endswith("-cpu") and f"-t {trainer} " in readme
    assert f"-t {container['image']} " in readme
    assert "--build-arg VARIANT=cpu" in readme


def test_the_kind_job_is_the_offline_example_on_cpus_on_the_kind_workers() -> None:
    """manifests/kind/offline.yaml is generated from the offline example; its workers fit the kind cluster:
    no GPUs, a node selector that the kind workers carry, one worker node per job node."""
    from tests.deploy.manifests import KIND_JOB, OFFLINE_EXAMPLE, render_kind_job

    assert KIND_JOB.read_text() == render_kind_job(), "stale: run python -m tests.deploy.manifests"
    (kind_job,) = load_jobs(KIND_JOB)
    (example,) = load_jobs(OFFLINE_EXAMPLE)
    assert kind_job.spec.model_dump(exclude={"kubernetes"}) == example.spec.model_dump(exclude={"kubernetes"})
    assert kind_job.spec.kubernetes.resources.gpus_per_node == 0
    cluster = yaml.safe_load((MANIFESTS / "kind" / "cluster.yaml").read_text())
    assert cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4" and cluster["kind"] == "Cluster"
    workers = [n for n in cluster["nodes"] if n["role"] == "worker"]
    selector = kind_job.spec.kubernetes.node_selector.items()
    fitting = [n for n in workers if selector <= n.get("labels", {}).items()]
    assert len(fitting) >= kind_job.spec.distribution.nodes
    assert (CHART / "Chart.yaml").exists()
