"""Installing the chart into the real test control plane, and running its operator as a local process.

KWOK nodes run no containers, so the operator pod the chart creates is scheduled but never executes. The
same program runs here instead, with the exact arguments of the installed StatefulSet and the credentials
of the chart's ServiceAccount (a TokenRequest token: the API server applies that account's RBAC, nothing
more), which is what the pod would do in a real cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.chart import CHART, Helm
from tests.kube.harness import wait_for
from tests.kube.processes import free_loopback_port


@dataclass
class Release:
    """A Helm release of charts/kubetune in the test cluster."""

    helm: Helm
    kubeconfig: Path
    name: str
    namespace: str
    values_file: Path
    notes: str = ""

    @property
    def fullname(self) -> str:
        return self.name if "kubetune" in self.name else f"{self.name}-kubetune"

    def _args(self, *args: str) -> list[str]:
        return [*args, "--namespace", self.namespace, "--kubeconfig", str(self.kubeconfig)]

    def install(self, values: dict[str, Any]) -> str:
        """`helm install`; returns its output (with the rendered NOTES)."""
        self.values_file.write_text(yaml.safe_dump(values))
        result = self.helm.run(
            *self._args("install", self.name, str(CHART), "--values", str(self.values_file))
        )
        self.notes = result.stdout
        return result.stdout

    def upgrade(self, values: dict[str, Any]) -> str:
        """`helm upgrade` with these values (replacing the previous ones); returns its output."""
        self.values_file.write_text(yaml.safe_dump(values))
        result = self.helm.run(
            *self._args("upgrade", self.name, str(CHART), "--values", str(self.values_file))
        )
        return result.stdout

    def uninstall(self) -> None:
        self.helm.run(*self._args("uninstall", self.name, "--wait", "--timeout", "60s"), check=False)

    def manifest(self) -> list[dict[str, Any]]:
        """The objects of the release as Helm recorded them (`helm get manifest`)."""
        out = self.helm.run(*self._args("get", "manifest", self.name)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def hooks(self) -> list[dict[str, Any]]:
        """The release's hook objects (`helm get hooks`): the `helm test` pod."""
        out = self.helm.run(*self._args("get", "hooks", self.name)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def operator_container(self) -> dict[str, Any]:
        """The operator container of the installed StatefulSet."""
        (workload,) = [o for o in self.manifest() if o["kind"] == "StatefulSet"]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        result: dict[str, Any] = container
        return result


@dataclass
class ChartOperator:
    """The installed StatefulSet's operator command, run locally as replica `index` of the release."""

    container: dict[str, Any]
    kubeconfig: Path
    log_path: Path
    index: int = 0
    pod_id: str = ""  # kopf's peer identity; defaults to operator-<index> like the pod names
    health_port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        """The container's args as Kubernetes would expand them, with loopback ports free on this machine."""
        self.health_port, self.metrics_port = free_loopback_port(), free_loopback_port()
        expanded = []
        for arg in self.container["args"]:
            arg = arg.replace("$(POD_INDEX)", str(self.index))
            if arg.startswith("--health-port="):
                arg = f"--health-port={self.health_port}"
            elif arg.startswith("--metrics-port="):
                arg = f"--metrics-port={self.metrics_port}"
            expanded.append(arg)
        # The image's ENTRYPOINT is the `kubetune` console script: the same entry point, from this venv.
        return [sys.executable, "-m", "kubetune.cli", *expanded]

    def start(self) -> None:
        """Starts the process and waits until its liveness endpoint answers."""
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "POD_ID": self.pod_id or f"operator-{self.index}",
            "POD_INDEX": str(self.index),
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake this machine for a pod
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self.healthy, 30, "the chart's operator to answer /healthz")

    def healthy(self) -> bool:
        """True once /healthz answers 200; raises AssertionError (with the log) if the process exited."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as answer:
            text: str = answer.read().decode()
            return text

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
