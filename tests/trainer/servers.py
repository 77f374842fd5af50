"""Real servers on loopback for the object storage and tracking tests (issue 13).

- `S3Server`: gofakes3's S3 server (Go, our command hack/s3/modules/gofakes3/main.go built by hack/s3/build.sh;
  `make test` exports its bin directory as KUBETUNE_S3_BIN), its buckets in memory (gofakes3's filesystem backend
  cannot store the directory marker objects that pyarrow's S3 client writes, keys ending in "/"; the server lives
  as long as the test). The trainer talks HTTP to it through pyarrow's S3 client, as to any S3-compatible store:
  no in-process mock. gofakes3 accepts any credentials; given `credentials`, our command refuses every request not
  signed (AWS Signature V4) with that key pair, so a test can show which keys the trainer really sends.
- `MlflowServer`: `mlflow server` from its own virtualenv (hack/mlflow/setup.sh; KUBETUNE_MLFLOW_VENV): the
  server needs pyarrow < 26, which this project's venv cannot hold beside datasets, and the trainer needs only
  the client (mlflow-skinny).

Both listen on 127.0.0.1 only, on a free port; a server that cannot start fails the test with the reason.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.kube.binaries import cache_root
from tests.kube.processes import ManagedProcess, ProcessFailed, free_loopback_port

ROOT = Path(__file__).resolve().parents[2]
S3_ENV = "KUBETUNE_S3_BIN"
MLFLOW_ENV = "KUBETUNE_MLFLOW_VENV"
BUCKET = "kubetune"


class ServerNotFound(RuntimeError):
    """No build of the server: the message says how to make one."""


def _script_output(script: Path) -> str:
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise ServerNotFound(f"{script.relative_to(ROOT)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def find_s3_binary() -> Path:
    """gofakes3 from $KUBETUNE_S3_BIN, else the cache for the pinned version. Raises ServerNotFound."""
    explicit = os.environ.get(S3_ENV)
    folder = (
        Path(explicit)
        if explicit
        else cache_root() / "s3" / _script_output(ROOT / "hack/s3/cache-key.sh") / "bin"
    )
    binary = folder / "gofakes3"
    if not binary.is_file():
        raise ServerNotFound(
            f"no S3 test server at {binary}: run `bash hack/s3/build.sh` (about 30 s) and export {S3_ENV} to "
            "the directory it prints last"
        )
    return binary


def find_mlflow_venv() -> Path:
    """The MLflow server's virtualenv from $KUBETUNE_MLFLOW_VENV, else the cached one. Raises ServerNotFound."""
    explicit = os.environ.get(MLFLOW_ENV)
    venv = (
        Path(explicit)
        if explicit
        else cache_root() / "mlflow" / _script_output(ROOT / "hack/mlflow/cache-key.sh")
    )
    if not (venv / "bin" / "mlflow").is_file():
        raise ServerNotFound(
            f"no MLflow server virtualenv at {venv}: run `bash hack/mlflow/setup.sh` (about a minute) and export "
            f"{MLFLOW_ENV} to the directory it prints last"
        )
    return venv


def _wait_http(url: str, process: ManagedProcess, timeout: float, name: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not process.running():
            raise ProcessFailed(f"{name} exited while starting:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (an error status is still an answer)
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise ProcessFailed(f"{name} did not answer {url} within {timeout} s:\n{process.log_tail()}")


class S3Server:
    """gofakes3 (memory backend, log under `folder`) with the bucket BUCKET; `endpoint` is its URL. With
    `credentials` (access key id, secret) only requests signed with them are served."""

    def __init__(self, folder: Path, credentials: tuple[str, str] | None = None) -> None:
        self.port = free_loopback_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            str(find_s3_binary()),
            "-host",
            f"127.0.0.1:{self.port}",
            "-backend",
            "mem",
            "-initialbucket",
            BUCKET,
        ]
        if credentials is not None:
            argv += ["-credentials", ":".join(credentials)]
        self.process = ManagedProcess("gofakes3", argv, folder)

    def log(self) -> str:
        """What the server logged so far (refused requests are logged with S3's error code)."""
        return self.process.log_path.read_text(errors="replace")

    def start(self) -> S3Server:
        self.process.start()
        _wait_http(self.endpoint + "/", self.process, 30, "the S3 server (gofakes3)")
        return self

    def stop(self) -> None:
        self.process.stop()


class MlflowServer:
    """`mlflow server` with a SQLite store and artifacts under `folder`; `url` is its tracking URI."""

    def __init__(self, folder: Path) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        venv = find_mlflow_venv()
        self.process = ManagedProcess(
            "mlflow",
            [
                str(venv / "bin" / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(folder / "artifacts"),
            ],
            folder,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
        )

    def start(self) -> MlflowServer:
        self.process.start()
        _wait_http(self.url + "/health", self.process, 120, "the MLflow server")
        return self

    def stop(self) -> None:
        self.process.stop()
