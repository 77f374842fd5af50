#!/usr/bin/env bash
# Regenerates hack/coscheduling/modules/coscheduling/go.mod and go.sum. Run it after bumping KUBERNETES_VERSION
# in hack/cluster/versions.env (and after hack/cluster/pin.sh); commit the result. build.sh builds with
# -mod=readonly and never changes these files.
#
# The module requires k8s.io/kubernetes at the control plane's version with the control plane's replace block
# (copied from hack/cluster/modules/kubernetes/go.mod), and nothing that would raise a module the control plane
# also compiles: with -trimpath a package's compiled form names its module's *required* version, so one raised
# requirement (even one a replace puts back) recompiles everything above it. The check at the end fails the pin
# when a shared module's version differs from the control plane's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/versions.env
source "${here}/../cluster/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
cluster_module="${here}/../cluster/modules/kubernetes"
module="${here}/modules/coscheduling"
replaces="$(sed -n '/^replace (/,/^)/p' "${cluster_module}/go.mod")"
# The control plane's whole requirement list as a floor: `go mod tidy` keeps what our packages need at those
# versions and drops the rest.
requires="$(sed -n '/^require (/,/^)/p' "${cluster_module}/go.mod")"
go_module_pin "${module}" "$(printf 'module kubetune.local/coscheduling\n\ngo 1.26.0\n\ngodebug default=go1.26\n\nrequire k8s.io/kubernetes %s\n\n%s\n\n%s\n' "${KUBERNETES_VERSION}" "${requires}" "${replaces}")
"

# "path version" of the modules whose packages the scheduler compiles, and of the control plane's build list.
compiled="$(cd "${module}" && GOTOOLCHAIN=local GOWORK=off go list -deps -f '{{with .Module}}{{.Path}} {{.Version}}{{end}}' . | sort -u)"
cluster="$(cd "${cluster_module}" && GOTOOLCHAIN=local GOWORK=off go list -m -f '{{.Path}} {{.Version}}' all | sort)"
differing="$(join <(echo "${compiled}") <(echo "${cluster}") | awk '$2 != $3')"
if [[ -n "${differing}" ]]; then
  echo "pin.sh: these modules' versions differ from the control plane's (module, here, there):" >&2
  echo "${differing}" >&2
  echo "pin.sh: every Kubernetes package would compile twice; drop what raises them" >&2
  exit 1
fi
