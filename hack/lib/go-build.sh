#!/usr/bin/env bash
# Shared by the Go build scripts under hack/ that cache binaries under $KUBETUNE_CACHE: source it, then
#   go_build_prepare <area> <key> <binary>...   sets DEST; exits 0 printing DEST/bin when it is complete
#   go_build <module-dir> <ldflags> <output> <package>...
#   go_build_finish                             moves the staging directory to DEST, prints DEST/bin
# The conventions are those of hack/cluster/build.sh: one build at a time per cache root (flock), no cgo,
# -trimpath, the committed go.mod/go.sum as they are (-mod=readonly), the machine's own Go, `nice` with
# KUBETUNE_BUILD_JOBS (default 2) compile jobs, the bin directory as the LAST line on stdout.

_go_build_complete() { # dir binary...
  local dir="$1" b
  shift
  for b in "$@"; do [[ -x "${dir}/bin/${b}" ]] || return 1; done
}

go_build_prepare() { # area key binary...
  local area="$1" key="$2"
  shift 2
  local cache_root="${KUBETUNE_CACHE:-${HOME}/.cache/kubetune}"
  DEST="${cache_root}/${area}/${key}"
  if _go_build_complete "${DEST}" "$@"; then
    echo "reusing ${DEST}/bin" >&2
    echo "${DEST}/bin"
    exit 0
  fi
  mkdir -p "${cache_root}/${area}"
  # A second caller waits for the first one's build and then reuses it.
  exec 9>"${cache_root}/${area}/.build.lock"
  flock 9
  if _go_build_complete "${DEST}" "$@"; then
    echo "${DEST}/bin"
    exit 0
  fi
  export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath"
  GO_BUILD_JOBS="${KUBETUNE_BUILD_JOBS:-2}"
  STAGING="$(mktemp -d "${cache_root}/${area}/.build-XXXXXX")"
  # shellcheck disable=SC2064 # expand now: STAGING is fixed from here on
  trap "rm -rf '${STAGING}'" EXIT
  mkdir -p "${STAGING}/bin"
  GO_BUILD_START=${SECONDS}
}

go_build() { # module-dir ldflags output package...
  local module_dir="$1" ldflags="$2" output="$3"
  shift 3
  echo "building $* (module ${module_dir})" >&2
  (cd "${module_dir}" && nice -n 10 go build -p "${GO_BUILD_JOBS}" -ldflags="${ldflags}" -o "${output}" "$@")
}

go_build_finish() {
  echo "built in $((SECONDS - GO_BUILD_START))s" >&2
  rm -rf "${DEST}"
  mv "${STAGING}" "${DEST}"
  trap - EXIT
  echo "${DEST}/bin"
}
