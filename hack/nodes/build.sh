#!/usr/bin/env bash
# Builds (or reuses) the binaries of the real test nodes from the Go modules pinned under
# hack/nodes/modules/: kubelet and kube-proxy (same k8s.io/kubernetes release as the control plane) and a
# CoreDNS with only the plugins the tests use.
#
# They go to ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/nodes/<key>/bin, where <key> comes from
# cache-key.sh. Idempotent: a complete bin directory for the key is reused as it is. The bin directory path
# is the LAST line printed on stdout (everything else goes to stderr). Runs under `nice` with two compile
# jobs (KUBETUNE_BUILD_JOBS to change that); one build at a time per cache root (flock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/versions.env
source "${here}/../cluster/versions.env"
# shellcheck source=versions.env
source "${here}/versions.env"

cache_root="${KUBETUNE_CACHE:-${HOME}/.cache/kubetune}"
key="$("${here}/cache-key.sh")"
dest="${cache_root}/nodes/${key}"
binaries=(kubelet kube-proxy coredns)

complete() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$1/bin/${b}" ]] || return 1; done
}

if complete "${dest}"; then
  echo "reusing ${dest}/bin" >&2
  echo "${dest}/bin"
  exit 0
fi

mkdir -p "${cache_root}/nodes"
exec 9>"${cache_root}/nodes/.build.lock"
flock 9
if complete "${dest}"; then
  echo "${dest}/bin"
  exit 0
fi

# As hack/cluster/build.sh: no cgo, reproducible, the committed go.mod/go.sum as they are, the local Go.
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath"
jobs="${KUBETUNE_BUILD_JOBS:-2}"
staging="$(mktemp -d "${cache_root}/nodes/.build-XXXXXX")"
trap 'rm -rf "${staging}"' EXIT
mkdir -p "${staging}/bin"

# The version stamps Kubernetes' hack/lib/version.sh sets, so that the Node reports kubeletVersion
# v1.36.3 rather than v0.0.0-master (the API server and kubectl compare it).
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
build kubernetes "${kube_ldflags}" "${staging}/bin/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
build coredns "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
  "${staging}/bin/coredns" .
cp "${here}/../cluster/versions.env" "${staging}/cluster-versions.env"
cp "${here}/versions.env" "${staging}/versions.env"
echo "built in $((SECONDS - start))s" >&2

rm -rf "${dest}"
mv "${staging}" "${dest}"
trap - EXIT
echo "${dest}/bin"
