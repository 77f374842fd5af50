#!/usr/bin/env bash
# Regenerates the go.mod/go.sum of the build modules under hack/cluster/modules/ from versions.env.
# Run it only when bumping a version; commit the result. build.sh never changes these files
# (it builds with -mod=readonly), which is what makes the build reproducible.
#
# Each tool gets its own module so that Go's minimal version selection never mixes, say, helm's
# client-go with the one kube-apiserver was released with.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod

# The staging modules that k8s.io/kubernetes lists at v0.0.0 with a local replace; every one of them is
# published at the v0.Y.Z matching the release (k8s.io/sample-cli-plugin is not, and kubernetes does not
# require it).
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
write_module kubernetes kubetune.local/cluster/kubernetes "godebug default=go1.26

tool (
	k8s.io/kubernetes/cmd/kube-apiserver
	k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-scheduler
	k8s.io/kubernetes/cmd/kubectl
)

require k8s.io/kubernetes ${KUBERNETES_VERSION}

replace (
${replaces})"

write_module etcd kubetune.local/cluster/etcd "tool go.etcd.io/etcd/server/v3

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"

write_module kwok kubetune.local/cluster/kwok "tool sigs.k8s.io/kwok/cmd/kwok

require sigs.k8s.io/kwok ${KWOK_VERSION}"

write_module helm kubetune.local/cluster/helm "tool helm.sh/helm/v3/cmd/helm

require helm.sh/helm/v3 ${HELM_VERSION}"
