#!/usr/bin/env bash
# Brings the local test cluster up in the foreground: builds (or reuses) the binaries, starts etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and KWOK with 2 GPU nodes on 127.0.0.1,
# prints `export KUBECONFIG=...`, and stops everything on Ctrl-C.
#   bash hack/cluster/up.sh [--gpu-nodes N] [--gpus-per-node M] [--keep]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
KUBETUNE_CLUSTER_BIN="$(bash "${here}/build.sh" | tail -n 1)"
export KUBETUNE_CLUSTER_BIN
# The harness needs the project's Python packages (kubernetes, PyYAML): prefer an active virtualenv,
# then the shared one in the kubetune cache.
python="python3"
if [[ -z "${VIRTUAL_ENV:-}" && -x "${KUBETUNE_CACHE:-${HOME}/.cache/kubetune}/venv/bin/python" ]]; then
  python="${KUBETUNE_CACHE:-${HOME}/.cache/kubetune}/venv/bin/python"
fi
cd "${repo}"
exec "${python}" -m tests.kube.up "$@"
