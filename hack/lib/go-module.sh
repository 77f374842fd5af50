#!/usr/bin/env bash
# Shared by the pinned Go-built test parts under hack/ that get a Go module of their own (kueue, s3, peer):
# source it, then
#   go_module_key <part-dir> <name-prefix> <file>...   prints <name-prefix>-<digest>, the digest a sha256 of
#                                                       the named files (paths relative to <part-dir>, names
#                                                       included) cut to 12 hex digits
#   go_module_pin <module-dir> <go.mod text>            writes go.mod, regenerates go.sum (`go mod tidy`)
# The key names every file that decides what gets built, so a change to one rebuilds that part only; this
# file is not among them: how a key is computed does not change what is built.

go_module_key() { # part-dir prefix file...
  local dir="$1" prefix="$2" digest f
  shift 2
  # (A missing file must fail here: inside the pipe below only the last `cat` decides the status, so a missing
  # file among the others would give a key without it.)
  for f in "$@"; do
    if [[ ! -f "${dir}/${f}" ]]; then
      echo "go_module_key: ${dir}/${f} does not exist (a file the key of ${prefix} names)" >&2
      return 1
    fi
  done
  digest="$(
    cd "${dir}" &&
      for f in "$@"; do
        printf '%s\n' "${f}"
        cat "${f}"
      done | sha256sum | cut -c1-12
  )"
  echo "${prefix}-${digest}"
}

go_module_pin() { # module-dir go.mod-text
  local dir="$1"
  mkdir -p "${dir}"
  printf '%s' "$2" >"${dir}/go.mod"
  rm -f "${dir}/go.sum"
  (cd "${dir}" && GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod go mod tidy)
  echo "pinned ${dir}" >&2
}
