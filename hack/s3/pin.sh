#!/usr/bin/env bash
# Regenerates hack/s3/modules/gofakes3/go.mod and go.sum from versions.env. Run it only when bumping
# GOFAKES3_VERSION; commit the result. build.sh builds with -mod=readonly and never changes these files.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod

dir="${here}/modules/gofakes3"
mkdir -p "${dir}"
printf 'module kubetune.local/gofakes3\n\ngo 1.26.0\n\ntool github.com/johannesboyne/gofakes3/cmd/gofakes3\n\nrequire github.com/johannesboyne/gofakes3 %s\n' \
  "${GOFAKES3_VERSION}" >"${dir}/go.mod"
rm -f "${dir}/go.sum"
(cd "${dir}" && go mod tidy)
echo "pinned ${dir}" >&2
