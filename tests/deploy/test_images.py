"""The built images, run by a real Docker daemon: what a node's runtime gets from `make images`.

`bash hack/images/build.sh` builds (or, when nothing changed, just names) the operator and trainer tars; a
private dockerd (hack/images/dockerd.sh: no bridge, no iptables, data under $KUBETUNE_CACHE/docker) loads
them, and the containers run the way the chart and the operator's worker pods run them: uid 1000, a
read-only root filesystem, every capability dropped, writable space only where a pod mounts volumes.
When the build or the daemon cannot start, the tests fail with the reason; they never skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "images" / "build.sh"
DOCKERD = REPO / "hack" / "images" / "dockerd.sh"
UID = 1000
# What every container here gets, as in the chart's and the worker pods' securityContext. No network:
# containers see only their own loopback (a one-node trainer's rendezvous needs no more).
LOCKED_DOWN = [
    "--rm",
    "--read-only",
    f"--user={UID}:{UID}",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--network=none",
]
# Files larger than this are not searched for the certificate bundle (bundles are a few hundred KB).
LARGEST_SEARCHED = 4 * 1024 * 1024


@dataclass(frozen=True)
class BuiltImage:
    """One image from build.sh: its docker-archive tar and its reference."""

    tar: Path
    ref: str


def _docker_client() -> str:
    """Debian's docker client (the daemon's version) when present, else the one on PATH."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


class Docker:
    """The docker client, talking to the private daemon at `host`."""

    def __init__(self, host: str, config_dir: Path) -> None:
        self.env = {**os.environ, "DOCKER_HOST": host, "DOCKER_CONFIG": str(config_dir)}

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Runs `docker ARGS`; raises AssertionError with its output when `check` and it fails."""
        result = subprocess.run(
            [_docker_client(), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"docker {' '.join(args)} exited {result.returncode}:\n" + (
                result.stdout[-4000:] + result.stderr[-4000:]
            )
        return result

    def inspect(self, ref: str) -> dict:
        """Returns `docker image inspect` of `ref`."""
        return json.loads(self("image", "inspect", ref).stdout)[0]


@pytest.fixture(scope="module")
def images() -> dict[str, BuiltImage]:
    """The two images from `bash hack/images/build.sh` (seconds when they are up to date; a cold build takes
    several minutes for the operator and more for the trainer: `make images` runs it before the tests)."""
    result = subprocess.run(
        ["bash", str(BUILD)], capture_output=True, text=True, timeout=3600, check=False, cwd=REPO
    )
    if result.returncode != 0:
        pytest.fail(f"hack/images/build.sh failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
    lines = result.stdout.strip().splitlines()[-2:]
    built = {}
    for line in lines:
        name, _, rest = line.partition("=")
        tar, ref = rest.split(" ")
        built[name] = BuiltImage(Path(tar), ref)
    assert set(built) == {"operator", "trainer"}, result.stdout
    for image in built.values():
        assert image.tar.is_file(), f"build.sh named {image.tar}, which does not exist"
    return built


@pytest.fixture(scope="module")
def docker(images: dict[str, BuiltImage]) -> Iterator[Docker]:
    """A private dockerd with both images loaded (from their tars, unless it has the same image ids already)."""
    folder = Path(tempfile.mkdtemp(prefix="kt-dockerd.", dir="/tmp"))  # short: a unix socket path
    started = subprocess.run(
        ["bash", str(DOCKERD), "start", str(folder)],
        capture_output=True,
        text=True,
        timeout=2000,
        check=False,
    )
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"the private Docker daemon did not start (hack/images/dockerd.sh):\n{started.stderr}")
    try:
        client = Docker(started.stdout.strip(), folder / "client")
        for image in images.values():
            present = client("image", "inspect", "--format", "{{.Id}}", image.ref, check=False).stdout.strip()
            if present != _archive_image_id(image.tar):
                client("load", "--input", str(image.tar), timeout=1200)
        yield client
        # The tars are the images' copies: kept loaded, the trainer would hold 7 GB more of a shared disk
        # until the next build (hack/images/build.sh removes its images from Docker once saved, likewise).
        for image in images.values():
            client("image", "rm", image.ref, check=False)
    finally:
        subprocess.run(["bash", str(DOCKERD), "stop", str(folder)], check=False, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _archive_manifest(tar: Path) -> dict:
    """The single entry of a docker-archive's manifest.json (Config, RepoTags, Layers)."""
    with tarfile.open(tar) as archive:
        member = archive.extractfile("manifest.json")
        assert member is not None
        (manifest,) = json.load(member)
    return manifest


def _archive_image_id(tar: Path) -> str:
    """The image id (sha256 of its config) of the image in a docker-archive tar."""
    return "sha256:" + _archive_manifest(tar)["Config"].removesuffix(".json").rpartition("/")[2]


# --- what the images are -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "command"), [("operator", "operator"), ("trainer", "train")])
def test_each_image_runs_kubetune_as_uid_1000(
    images: dict[str, BuiltImage], docker: Docker, name: str, command: str
) -> None:
    """The archive holds the image under its reference; its config says uid 1000, `kubetune COMMAND`."""
    image = images[name]
    assert _archive_manifest(image.tar)["RepoTags"] == [image.ref]
    config = docker.inspect(image.ref)["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["kubetune"]
    assert config["Cmd"] == [command]
    identity = docker("run", *LOCKED_DOWN, "--entrypoint", "id", image.ref).stdout.split()
    assert identity[:2] == [f"uid={UID}(kubetune)", f"gid={UID}(kubetune)"], identity


def test_image_refs_match_the_chart_values_for_kind(images: dict[str, BuiltImage]) -> None:
    """manifests/kind/values.yaml (what docs/deploy.md installs after loading these tars) names these refs."""
    values = yaml.safe_load((REPO / "manifests" / "kind" / "values.yaml").read_text())
    assert images["operator"].ref == f"{values['image']['repository']}:{values['image']['tag']}"
    trainer = values["trainer"]["image"]
    assert images["trainer"].ref == f"{trainer['repository']}:{trainer['tag']}"


def test_the_sizes_of_the_images(
    images: dict[str, BuiltImage], docker: Docker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prints each image's size; the operator stays small (no torch) and the trainer within reason."""
    sizes = {name: docker.inspect(image.ref)["Size"] for name, image in images.items()}
    with capsys.disabled():
        for name, image in images.items():
            print(
                f"\n  {name}: {image.ref} image {sizes[name] / 1e9:.2f} GB, "
                f"tar {image.tar.stat().st_size / 1e9:.2f} GB ({image.tar})"
            )
    assert sizes["operator"] < 1e9, sizes
    assert sizes["trainer"] < 12e9, sizes


# --- the operator image --------------------------------------------------------------------------------------


def test_the_operator_image_runs_on_a_read_only_root_and_prints_the_trees_crd(
    images: dict[str, BuiltImage], docker: Docker
) -> None:
    """`kubetune --help` and `kubetune crd` in a locked-down container; the CRD is the one this tree generates
    (so the image holds this tree's code); torch is not importable there."""
    ref = images["operator"].ref
    help_text = docker("run", *LOCKED_DOWN, ref, "--help").stdout
    assert "operator" in help_text and "train" in help_text
    in_image = yaml.safe_load(docker("run", *LOCKED_DOWN, ref, "crd").stdout)
    here = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "crd"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert in_image == yaml.safe_load(here.stdout)
    assert in_image["kind"] == "CustomResourceDefinition"
    no_torch = docker("run", *LOCKED_DOWN, "--entrypoint", "python", ref, "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr


# --- the trainer image ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_job() -> Iterator[Path]:
    """A folder for /job: a tiny BERT built here, synthetic sentiment data and a FineTuneJob for 1 node x 2
    processes that reads them with paths inside the container."""
    from kubetune_trainer.synthetic import (
        build_tiny_model,
        read_texts,
        write_job_file,
        write_sentiment_dataset,
    )

    folder = Path(tempfile.mkdtemp(prefix="kt-image-job."))
    try:
        train, evaluation = write_sentiment_dataset(folder / "data", n_train=400, n_eval=200, seed=0)
        build_tiny_model(folder / "model", corpus=read_texts(train), num_labels=2)
        write_job_file(
            folder / "job.yaml",
            model="/job/model",
            train="/job/data/" + train.name,
            eval="/job/data/" + evaluation.name,
            output="/output",
            name="image-smoke",
            overrides={
                "training": {"epochs": 2, "loggingSteps": 5, "learningRate": 2e-3, "warmupRatio": 0.1},
                "distribution": {"nodes": 1, "processesPerNode": 2},
                "checkpointing": {"everySteps": 1000, "keepLast": 1},
            },
        )
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # readable by uid 1000
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_trainer_image_trains_a_tiny_job_on_a_read_only_root(
    images: dict[str, BuiltImage], docker: Docker, tiny_job: Path
) -> None:
    """`kubetune train` (accelerate launch, 2 gloo processes) in a locked-down container: the job read-only at
    /job, tmpfs at /tmp and /cache (HF_HOME), and at /output a folder of ours (a pod's output volume), so we
    can read the metrics afterwards. The model learned: eval accuracy above chance (0.5)."""
    output = Path(tempfile.mkdtemp(prefix="kt-image-out."))
    os.chown(output, UID, UID)
    contract = {
        "KUBETUNE_JOB_FILE": "/job/job.yaml",
        "KUBETUNE_NODE_RANK": "0",
        "KUBETUNE_NUM_NODES": "1",
        "KUBETUNE_PROCS_PER_NODE": "2",
        "KUBETUNE_MAIN_ADDR": "127.0.0.1",
        "KUBETUNE_MAIN_PORT": "29500",
        "KUBETUNE_TERMINATION_LOG": "/output/termination-log",
    }
    try:
        result = docker(
            "run",
            *LOCKED_DOWN,
            # Like a pod's emptyDir volumes with fsGroup 1000 (Docker 20.10 ignores a tmpfs `mode`).
            f"--tmpfs=/tmp:rw,exec,uid={UID},gid={UID}",
            f"--tmpfs=/cache:rw,exec,uid={UID},gid={UID}",
            f"--volume={tiny_job}:/job:ro",
            f"--volume={output}:/output",
            "--shm-size=256m",
            *[f"--env={key}={value}" for key, value in contract.items()],
            images["trainer"].ref,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, (
            f"kubetune train exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
        summary = json.loads((output / "metrics.json").read_text())
        assert summary["outcome"] == "finished" and summary["world_size"] == 2, summary
        assert summary["metrics"]["eval_accuracy"] > 0.7, summary  # chance is 0.5: it learned
        assert (output / "model" / "config.json").exists()
        assert re.search(r"eval_accuracy", result.stdout + result.stderr)
    finally:
        shutil.rmtree(output, ignore_errors=True)


# --- no machine secrets in the images ------------------------------------------------------------------------


def _pem_bodies(text: str) -> list[str]:
    """The base64 bodies (joined, no line breaks) of the PEM certificates in `text`."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return ["".join(block.split()) for block in blocks]


def _build_cert_bundle() -> Path | None:
    """The certificate bundle build.sh hands to pip in the build (PIP_CERT or pip's global.cert)."""
    configured = (
        os.environ.get("PIP_CERT")
        or subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.cert"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    )
    return Path(configured) if configured and Path(configured).is_file() else None


def _machine_certificates(bundle: Path) -> list[str]:
    """The certificates of `bundle` that Debian's ca-certificates does not ship (this machine's own CAs)."""
    public = set()
    for crt in Path("/usr/share/ca-certificates").rglob("*.crt"):
        public.update(_pem_bodies(crt.read_text(errors="replace")))
    return [body for body in _pem_bodies(bundle.read_text(errors="replace")) if body not in public]


def _layer_files(tar: Path) -> Iterator[tuple[str, str, int, bytes | None]]:
    """Yields (layer, path, size, content or None when larger than LARGEST_SEARCHED) for every regular file
    of every layer of a docker-archive, files that later layers delete included."""
    with tarfile.open(tar) as archive:
        for layer in _archive_manifest(tar)["Layers"]:
            handle = archive.extractfile(layer)
            assert handle is not None
            with tarfile.open(fileobj=handle, mode="r|") as files:
                for member in files:
                    if not member.isfile():
                        continue
                    content = None
                    if member.size <= LARGEST_SEARCHED:
                        extracted = files.extractfile(member)
                        content = extracted.read() if extracted else b""
                    yield layer, member.name, member.size, content


def _bundle_findings(tar: Path, bundle: Path | None) -> list[str]:
    """Where a docker-archive holds `bundle` (its bytes, or one of this machine's own CA certificates from
    it, in any file of any layer) or a pip certificate setting (pip-cert.pem, pip.conf): "layer: path" lines."""
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest() if bundle else None
    # 64-character slices of each own certificate's body: found in any file that embeds the certificate.
    needles = [body[64:128].encode() for body in _machine_certificates(bundle)] if bundle else []
    found = []
    for layer, path, _, content in _layer_files(tar):
        if path.endswith(("pip-cert.pem", "pip.conf")) or (
            content is not None
            and (
                hashlib.sha256(content).hexdigest() == digest or any(needle in content for needle in needles)
            )
        ):
            found.append(f"{layer}: {path}")
    return found


def test_the_certificate_search_finds_the_bundle_and_its_own_certificates(tmp_path: Path) -> None:
    """The control for the test below: in a docker-archive made here, the search finds the bundle copied
    whole, one own certificate embedded in another file, and a pip.conf."""
    bundle = _build_cert_bundle()
    if bundle is None:
        pytest.fail("no pip certificate bundle configured (PIP_CERT / pip config global.cert) to search for")
    own = _machine_certificates(bundle)
    files = {"etc/ssl/copied.crt": bundle.read_bytes(), "etc/pip.conf": b"[global]\n", "usr/ok.txt": b"fine"}
    if own:
        files["usr/lib/embedded.pem"] = b"before\n" + own[0].encode() + b"\nafter\n"
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as archive:
        for name, content in files.items():
            (tmp_path / "file").write_bytes(content)
            archive.add(tmp_path / "file", arcname=name)
    (tmp_path / "manifest.json").write_text(json.dumps([{"Config": "0.json", "Layers": ["l/layer.tar"]}]))
    image = tmp_path / "image.tar"
    with tarfile.open(image, "w") as archive:
        archive.add(tmp_path / "manifest.json", arcname="manifest.json")
        archive.add(layer, arcname="l/layer.tar")
    expected = sorted(f"l/layer.tar: {name}" for name in files if name != "usr/ok.txt")
    assert sorted(_bundle_findings(image, bundle)) == expected


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_no_layer_of_the_images_holds_the_build_certificate_bundle(
    images: dict[str, BuiltImage], docker: Docker, name: str
) -> None:
    """The bundle build.sh passes into the build stages (pip-cert.pem) is in no layer of the final image:
    no file with its bytes, none holding one of this machine's own CA certificates, no pip config, no
    build-time pip settings in the image's environment."""
    bundle = _build_cert_bundle()  # None: build.sh passed no bundle; the names are still checked
    found = _bundle_findings(images[name].tar, bundle)
    assert not found, f"the build's certificate bundle or pip settings are in image layers: {found}"
    env = docker.inspect(images[name].ref)["Config"]["Env"]
    assert not [e for e in env if e.startswith(("PIP_CERT", "PIP_CONFIG", "REQUESTS_CA_BUNDLE", "SSL_CERT"))]
