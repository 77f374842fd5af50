#!/usr/bin/env bash
# Regenerates the go.mod/go.sum of the node build modules under hack/nodes/modules/ from
# hack/cluster/versions.env (Kubernetes) and hack/nodes/versions.env (CoreDNS). Run it only when bumping
# a version; commit the result. build.sh builds with -mod=readonly and never changes these files.
#
# The kubelet and kube-proxy get a module of their own, next to (not inside) the control plane's
# hack/cluster/modules/kubernetes: same k8s.io/kubernetes version and the same staging replaces, but
# changing it does not change the control plane's cache key (a full Kubernetes rebuild).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/versions.env
source "${here}/../cluster/versions.env"
# shellcheck source=versions.env
source "${here}/versions.env"
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod

# The same list as hack/cluster/pin.sh: the staging modules k8s.io/kubernetes requires at v0.0.0.
staging_modules=(
  api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider cluster-bootstrap
  code-generator component-base component-helpers controller-manager cri-api cri-client cri-streaming
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils
  pod-security-admission sample-apiserver sample-controller streaming
)

write_module() { # dir module-path go.mod-body
  local dir="${here}/modules/$1"
  mkdir -p "${dir}"
  printf 'module %s\n\ngo 1.26.0\n\n%s\n' "$2" "$3" >"${dir}/go.mod"
  rm -f "${dir}/go.sum"
  (cd "${dir}" && go mod tidy)
  echo "pinned ${dir}" >&2
}

replaces=""
for m in "${staging_modules[@]}"; do
  replaces+=$'\t'"k8s.io/${m} => k8s.io/${m} ${KUBERNETES_STAGING_VERSION}"$'\n'
done
write_module kubernetes kubetune.local/nodes/kubernetes "godebug default=go1.26

tool (
	k8s.io/kubernetes/cmd/kubelet
	k8s.io/kubernetes/cmd/kube-proxy
)

require k8s.io/kubernetes ${KUBERNETES_VERSION}

replace (
${replaces})"

# CoreDNS: a main of our own (modules/coredns/main.go) that links only the plugins the tests use.
write_module coredns kubetune.local/nodes/coredns "require github.com/coredns/coredns ${COREDNS_VERSION}"
