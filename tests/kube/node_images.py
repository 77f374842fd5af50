"""Container images for the real test nodes, made without Docker or a registry.

- the sandbox (pause) image: a static binary compiled from hack/nodes/pause.c;
- a small test image: a Debian minbase root filesystem with python3 (`mmdebstrap`).

Both are written as docker-archive tars (`docker save`'s format: manifest.json, the image config, one
layer tar), which `ctr images import` loads straight into a node's containerd. They are cached under
$KUBETUNE_CACHE/nodes/images/, named by a hash of their inputs, so a warm run builds nothing.

    python -m tests.kube.node_images     # builds both (CI runs this before the tests), prints their paths
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.kube.binaries import REPO_ROOT, cache_root

PAUSE_SOURCE = REPO_ROOT / "hack" / "nodes" / "pause.c"
# What decides the test image's content; part of its cache key.
DEBIAN_SUITE = "bookworm"
TEST_IMAGE_PACKAGES = ("python3",)
# Bump when the archive layout written here changes, so cached archives are rebuilt.
ARCHIVE_FORMAT = "1"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    """An image could not be built; the message carries the failing command's output."""


@dataclass(frozen=True)
class ImageArchive:
    """A docker-archive tar on disk and the reference (`name:tag`) it carries."""

    path: Path
    ref: str


def images_dir() -> Path:
    """Where the archives are cached: $KUBETUNE_CACHE/nodes/images."""
    return cache_root() / "nodes" / "images"


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:12]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_docker_archive(layer: Path, ref: str, config: dict[str, object], destination: Path) -> None:
    """Writes a one-layer docker-archive tar of `layer` (an uncompressed root filesystem tar) to
    `destination`, tagged `ref`, with `config` as the image's runtime config (Entrypoint, Env, ...)."""
    diff_id = f"sha256:{_file_sha256(layer)}"
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/kube/node_images.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = f"{hashlib.sha256(image_config).hexdigest()}.json"
    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
    partial = destination.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        for name, data in ((config_name, image_config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, _BytesReader(data))
        archive.add(layer, arcname=layer_name)
    partial.rename(destination)


class _BytesReader:
    def __init__(self, data: bytes):
        self._data = data
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        chunk = self._data[self._offset : end]
        self._offset += len(chunk)
        return chunk


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-3000:]
        raise ImageBuildError(f"{what} failed ({' '.join(argv[:3])} ... exit {result.returncode}): {output}")


def pause_image() -> ImageArchive:
    """Returns the sandbox image archive, compiling and wrapping it first when not cached.

    Raises ImageBuildError (e.g. gcc or the static libc missing: run hack/nodes/install-packages.sh).
    """
    key = _digest(PAUSE_SOURCE.read_bytes(), ARCHIVE_FORMAT.encode())
    ref = f"kubetune.local/pause:{key}"
    destination = images_dir() / f"pause-{key}.tar"
    if destination.is_file():
        return ImageArchive(destination, ref)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        binary = Path(scratch) / "pause"
        _run(
            ["gcc", "-static", "-O2", "-Wall", "-o", str(binary), str(PAUSE_SOURCE)],
            "compiling the pause binary",
        )
        layer = Path(scratch) / "layer.tar"
        with tarfile.open(layer, "w") as archive:
            info = archive.gettarinfo(str(binary), arcname="pause")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with binary.open("rb") as source:
                archive.addfile(info, source)
        write_docker_archive(
            layer, ref, {"Entrypoint": ["/pause"], "Env": [f"PATH={DEFAULT_PATH}"]}, destination
        )
    return ImageArchive(destination, ref)


def python_image() -> ImageArchive:
    """Returns the Debian minbase + python3 test image archive, making it with mmdebstrap when not cached
    (about 20-40 s, from the Debian mirror). Raises ImageBuildError."""
    inputs = json.dumps([DEBIAN_SUITE, TEST_IMAGE_PACKAGES, ARCHIVE_FORMAT]).encode()
    key = _digest(inputs)
    ref = f"kubetune.local/node-test:{key}"
    destination = images_dir() / f"node-test-{key}.tar"
    if destination.is_file():
        return ImageArchive(destination, ref)
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap is not installed; run `bash hack/nodes/install-packages.sh`")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        layer = Path(scratch) / "rootfs.tar"
        _run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(TEST_IMAGE_PACKAGES)}",
                # No apt lists or caches in the image: smaller, and nothing the tests use.
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                DEBIAN_SUITE,
                str(layer),
            ],
            "mmdebstrap of the test image",
        )
        config: dict[str, object] = {"Cmd": ["python3"], "Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"}
        write_docker_archive(layer, ref, config, destination)
    return ImageArchive(destination, ref)


if __name__ == "__main__":
    for image in (pause_image(), python_image()):
        print(f"{image.ref} {image.path} {os.path.getsize(image.path) / 1e6:.1f}MB")
