#!/usr/bin/env bash
# Builds (or reuses) the binaries of the local test control plane from the Go modules pinned under
# hack/cluster/modules/: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm.
#
# They go to ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/cluster/<key>/bin, where <key> comes from
# cache-key.sh. Idempotent: a complete bin directory for the key is reused as it is. The bin directory
# path is the LAST line printed on stdout (everything else goes to stderr).
#
# The first build compiles most of Kubernetes: about 5 minutes on 2 fast cores with an empty Go build
# cache (plus ~15 s of module downloads), up to half an hour on slow ones; relinking after a change to
# this script takes a minute or two. It runs under `nice` with two compile jobs
# (KUBETUNE_BUILD_JOBS to change that); linking kube-apiserver, the largest step, peaks at ~1.8 GiB.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

cache_root="${KUBETUNE_CACHE:-${HOME}/.cache/kubetune}"
key="$("${here}/cache-key.sh")"
dest="${cache_root}/cluster/${key}"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

complete() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$1/bin/${b}" ]] || return 1; done
}

if complete "${dest}"; then
  echo "reusing ${dest}/bin" >&2
  echo "${dest}/bin"
  exit 0
fi

mkdir -p "${cache_root}/cluster"
# One build at a time per cache root: a second caller waits and then reuses the first one's result.
exec 9>"${cache_root}/cluster/.build.lock"
flock 9
if complete "${dest}"; then
  echo "${dest}/bin"
  exit 0
fi

# Reproducible, self-contained and small: no cgo, no local paths or symbol tables in the binaries, the
# go.mod/go.sum files used as they are committed (no go.work from a parent directory), the machine's
# own Go (no toolchain download). Go's module and build caches stay at their defaults.
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath"
jobs="${KUBETUNE_BUILD_JOBS:-2}"
staging="$(mktemp -d "${cache_root}/cluster/.build-XXXXXX")"
trap 'rm -rf "${staging}"' EXIT
mkdir -p "${staging}/bin"

# What Kubernetes' own hack/lib/version.sh stamps into its binaries, so that `kubectl version` and the
# apiserver's /version report the real release instead of v0.0.0-master.
minor="${KUBERNETES_VERSION#v1.}"
minor="${minor%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  kube_ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
  kube_ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

build() { # module-dir ldflags output package...
  local module="$1" ldflags="$2" output="$3"
  shift 3
  echo "building $* (module ${module})" >&2
  (cd "${here}/modules/${module}" && nice -n 10 go build -p "${jobs}" -ldflags="${ldflags}" -o "${output}" "$@")
}

start=${SECONDS}
# etcd's main package is the root of go.etcd.io/etcd/server/v3, so name its output explicitly.
build etcd "-s -w" "${staging}/bin/etcd" go.etcd.io/etcd/server/v3
build kwok "-s -w" "${staging}/bin/" sigs.k8s.io/kwok/cmd/kwok
build helm "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" "${staging}/bin/" \
  helm.sh/helm/v3/cmd/helm
build kubernetes "${kube_ldflags}" "${staging}/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
cp "${here}/versions.env" "${staging}/versions.env"
echo "built in $((SECONDS - start))s" >&2

rm -rf "${dest}"
mv "${staging}" "${dest}"
trap - EXIT
echo "${dest}/bin"
