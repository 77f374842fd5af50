#!/usr/bin/env bash
# Regenerates hack/s3/modules/gofakes3/go.mod and go.sum from versions.env. Run it only when bumping
# GOFAKES3_VERSION or RCLONE_GOFAKES3_VERSION; commit the result. build.sh builds with -mod=readonly and never
# changes these files. main.go (committed, not generated) is the command; its imports decide what
# `go mod tidy` keeps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
go_module_pin "${here}/modules/gofakes3" \
  "$(printf 'module kubetune.local/gofakes3\n\ngo 1.26.0\n\nrequire (\n\tgithub.com/johannesboyne/gofakes3 %s\n\tgithub.com/rclone/gofakes3 %s\n)\n' "${GOFAKES3_VERSION}" "${RCLONE_GOFAKES3_VERSION}")
"
