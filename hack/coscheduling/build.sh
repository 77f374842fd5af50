#!/usr/bin/env bash
# Builds (or reuses) coscheduling-scheduler: kube-scheduler with the Coscheduling plugin of
# kubernetes-sigs/scheduler-plugins (an adapted copy, see modules/coscheduling/schedulerplugins/README.md), from
# the Go module pinned under hack/coscheduling/modules/coscheduling, against the control plane's Kubernetes
# (hack/cluster/versions.env) with the control plane's flags and version stamps. Every Kubernetes package is
# then already in Go's build cache from hack/cluster/build.sh: only the plugin compiles, and the binary links.
# It goes to ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/coscheduling/<key>/bin, <key> from cache-key.sh.
# Idempotent; the bin directory is the LAST line on stdout (everything else goes to stderr). Runs under `nice`
# with two compile jobs (KUBETUNE_BUILD_JOBS); one build at a time (flock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/versions.env
source "${here}/../cluster/versions.env"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-build.sh
source "${here}/../lib/go-build.sh"

go_build_prepare coscheduling "$("${here}/cache-key.sh")" coscheduling-scheduler

# The same -X stamps as hack/cluster/build.sh's (Kubernetes' hack/lib/version.sh), so that the scheduler
# reports v1.36.3 like the control plane's kube-scheduler. Only the link sees -ldflags: the compiled packages
# are the control plane's either way.
minor="${KUBERNETES_VERSION#v1.}"
minor="${minor%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  kube_ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
  kube_ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done
go_build "${here}/modules/coscheduling" "${kube_ldflags}" "${STAGING}/bin/coscheduling-scheduler" \
  kubetune.local/coscheduling
cp "${here}/versions.env" "${STAGING}/versions.env"
go_build_finish
