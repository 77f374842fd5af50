"""Given the local cluster, a CustomResourceDefinition behaves as on a real cluster: the structural
schema fills defaults and rejects bad values, a CEL rule rejects objects with its own message, the
status subresource separates status from spec, and `kubectl get` prints the printer columns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gpuwidgets.kubetune.test
spec:
  group: kubetune.test
  scope: Namespaced
  names: {kind: GpuWidget, plural: gpuwidgets, singular: gpuwidget, listKind: GpuWidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Workers, type: integer, jsonPath: .spec.workers}
    - {name: GPUs, type: integer, jsonPath: .spec.gpusPerWorker}
    - {name: Phase, type: string, jsonPath: .status.phase}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [model]
            x-kubernetes-validations:
            - rule: self.maxWorkers >= self.workers
              message: maxWorkers must be at least workers
            properties:
              model: {type: string, minLength: 1}
              workers: {type: integer, minimum: 1, default: 1}
              maxWorkers: {type: integer, minimum: 1, default: 4}
              gpusPerWorker: {type: integer, minimum: 0, default: 1}
              precision: {type: string, enum: [fp32, bf16, fp16], default: bf16}
          status:
            type: object
            properties:
              phase: {type: string}
"""


def widget(name: str, **spec: Any) -> str:
    lines = [f"  {key}: {value}" for key, value in spec.items()]
    return "\n".join(
        ["apiVersion: kubetune.test/v1", "kind: GpuWidget", f"metadata: {{name: {name}}}", "spec:", *lines]
    )


@pytest.fixture(scope="module")
def gpu_widget_crd(kube_cluster: LocalCluster) -> Iterator[None]:
    """Installs the CRD for this module's tests and removes it afterwards."""
    kube_cluster.kubectl("apply", "-f", "-", input=CRD)
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/gpuwidgets.kubetune.test", "--timeout=60s"
    )
    yield
    kube_cluster.kubectl("delete", "crd", "gpuwidgets.kubetune.test", "--wait=false")


@pytest.mark.usefixtures("gpu_widget_crd")
def test_schema_defaults_are_filled_by_the_server(kubectl: Any) -> None:
    kubectl("apply", "-f", "-", input=widget("small", model="bert-base"))
    spec = kubectl("get", "gpuwidget", "small", "-o", "jsonpath={.spec}").stdout
    assert '"workers":1' in spec and '"maxWorkers":4' in spec
    assert '"gpusPerWorker":1' in spec and '"precision":"bf16"' in spec


@pytest.mark.usefixtures("gpu_widget_crd")
@pytest.mark.parametrize(
    ("spec", "server_message"),
    [
        ({"model": "bert", "workers": 8, "maxWorkers": 4}, "maxWorkers must be at least workers"),
        ({"model": "bert", "precision": "int4"}, 'Unsupported value: "int4"'),
        ({"model": "bert", "workers": 0}, "should be greater than or equal to 1"),
        ({"model": "bert", "colour": "blue"}, 'unknown field "spec.colour"'),
        ({"workers": 2}, "spec.model: Required value"),
    ],
)
def test_invalid_objects_are_rejected_by_the_server_with_its_message(
    kubectl: Any, spec: dict[str, Any], server_message: str
) -> None:
    refused = kubectl("apply", "-f", "-", input=widget("bad", **spec), check=False)
    # kubectl only relays the API server's Status message: every check below is the server's.
    assert refused.returncode != 0
    assert server_message in refused.stderr
    assert "GpuWidget" in refused.stderr


@pytest.mark.usefixtures("gpu_widget_crd")
def test_status_is_a_subresource_and_kubectl_get_prints_the_columns(kubectl: Any) -> None:
    # Given a widget whose manifest also carries a status
    kubectl(
        "apply",
        "-f",
        "-",
        input=widget("big", model="llama", workers=2, gpusPerWorker=8) + "\nstatus: {phase: Hacked}",
    )
    # Then the status written through the main resource is dropped
    assert kubectl("get", "gpuwidget", "big", "-o", "jsonpath={.status.phase}").stdout == ""
    # and the status subresource sets it
    kubectl(
        "patch",
        "gpuwidget",
        "big",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Running"}}',
    )

    table = kubectl("get", "gpuwidgets").stdout.splitlines()
    assert table[0].split() == ["NAME", "WORKERS", "GPUS", "PHASE", "AGE"]
    assert table[1].split()[:4] == ["big", "2", "8", "Running"]
