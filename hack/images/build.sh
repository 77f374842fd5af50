#!/usr/bin/env bash
# `make images`: build the operator and trainer images from the one Dockerfile, with no container registry,
# and export them as docker-archive tars under $KUBETUNE_CACHE/images/.
#
#   bash hack/images/build.sh
#
# Progress goes to stderr. The last two lines of stdout are, for the scripts that load the images into a
# node's runtime (`ctr -n k8s.io images import TAR`, `kind load image-archive TAR`, `docker load -i TAR`):
#   operator=<tar path> <image ref>
#   trainer=<tar path> <image ref>
#
# How:
# - The base image is made from Debian's packages (mmdebstrap bookworm, minbase) and `docker import`ed as
#   kubetune-local/debian-python:<key> (Python 3.11): it stands in for all four upstream bases (python:slim,
#   nvidia/cuda base and devel, the CPU build stage). The trainer's build stage apt-installs its compiler and
#   headers on top (a cached layer), which is faster than a second mmdebstrap. <key> hashes the recipe below;
#   the imported image's id is recorded so that later runs need no daemon to know it.
# - Docker is Debian's docker.io, run privately by hack/images/dockerd.sh: no bridge, no iptables, builds with
#   --network host, data root under $KUBETUNE_CACHE/docker so its layers serve as the build cache next time.
#   The legacy builder (DOCKER_BUILDKIT=0) works offline; BuildKit would pull its frontend image.
# - Each tar is keyed by a hash of everything the image is built from (the build context: Dockerfile, sources,
#   pyproject.toml, constraints, example data; these scripts; the build args; the base images' ids). When the
#   tars for the current key exist, the script prints them without starting Docker.
# - pip in the build reaches PyPI through this machine's certificate bundle (PIP_CERT or `pip config`'s
#   global.cert, when set): it goes into the build context as pip-cert.pem, used by build stages only.
#
# Settings (environment):
#   KUBETUNE_CACHE            cache root (default ~/.cache/kubetune)
#   KUBETUNE_TORCH_INDEX_URL  the Dockerfile's TORCH_INDEX_URL (default empty: PyPI; "auto" for PyTorch's CPU
#                             index, which is the Dockerfile's own default but unreachable on some machines)
#   KUBETUNE_IMAGE_BASES      debian (default) or upstream (the Dockerfile's default bases, pulled by Docker)
#   KUBETUNE_IMAGE_TARS_KEPT  tars kept per image, the most recently used (default 1; more when several checkouts
#                             share a cache and the disk has room: the trainer's tar is 7 GB)
#
# Disk: the machine's disk is shared and its free space varies, so the script keeps what it leaves small and
# checks the room a build needs before it starts one (see `need_room`). What stays: the dependency stages
# (the next build's cache; the trainer's is 7.5 GB) and one tar per image. The built images themselves are
# removed from Docker once saved: their copy is the tar.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/hack/images"
cache="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
images_dir="$cache/images"
torch_index="${KUBETUNE_TORCH_INDEX_URL-}"
bases_mode="${KUBETUNE_IMAGE_BASES:-debian}"
variant=cpu
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -n 1)"
operator_ref="ghcr.io/kubetune/operator:$version"
trainer_ref="ghcr.io/kubetune/trainer:$version-$variant"
docker_bin="${DOCKER:-$(if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else echo docker; fi)}"

# The Debian base: suite, mirrors and packages. Changing any of it makes a new base (a new key).
debian_suite=bookworm
debian_mirrors=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
# python3-venv/-pip and python-is-python3: the stages run `python -m venv` and `python`; passwd: useradd;
# libgomp1, libaio1: DeepSpeed's CPU Adam and AIO ops at run time.
base_packages=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd,libgomp1,libaio1

log() { printf '[images %(%T)T] %s\n' -1 "$*" >&2; }
sha() { sha256sum | cut -c1-16; }

mkdir -p "$images_dir/bases" "$images_dir/logs"
exec 9>"$images_dir/build.lock"
if ! flock --nonblock 9; then
  log "another build of this cache is running: waiting for it ($images_dir/build.lock)"
  flock 9
fi

# --- the keys ------------------------------------------------------------------------------------------------
base_key() { # NAME PACKAGES -> key of that base's recipe
  printf '%s\n' "$1" "$debian_suite" "${debian_mirrors[@]}" "$2" "--variant=minbase" | sha
}
base="kubetune-local/debian-python:$(base_key debian-python "$base_packages")"
id_file() { echo "$images_dir/bases/${1//[\/:]/_}.id"; }

context=$(mktemp -d /tmp/kt-images.XXXXXX)
daemon_dir=""
cleanup() {
  if [[ -n "$daemon_dir" ]]; then bash "$here/dockerd.sh" stop "$daemon_dir" || true; fi
  if [[ -n "$daemon_dir" ]]; then rm -rf "$daemon_dir" || true; fi
  rm -rf "$context" || true
}
trap cleanup EXIT

# The build context: what .dockerignore lets in (its `!` lines), without bytecode and caches, so that the key
# hashes exactly what is built.
make_context() {
  local allowed=()
  while IFS= read -r line; do
    line="${line#!}"
    line="${line%/}"
    [[ -e "$root/$line" ]] && allowed+=("$line")
  done < <(grep '^!' "$root/.dockerignore")
  (cd "$root" && tar -c --exclude=__pycache__ --exclude='*.py[cod]' --exclude='*.egg-info' \
    --exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache --exclude='*.swp' \
    --exclude=pip-cert.pem "${allowed[@]}") | tar -x -C "$context"
  cp "$root/Dockerfile" "$root/.dockerignore" "$context/"
}
make_context

build_args=(--build-arg "VARIANT=$variant" --build-arg "TORCH_INDEX_URL=$torch_index" --build-arg "VERSION=$version")
if [[ "$bases_mode" == debian ]]; then
  build_args+=(
    --build-arg "PYTHON_IMAGE=$base" --build-arg "CUDA_BASE_IMAGE=$base"
    --build-arg "CUDA_DEVEL_IMAGE=$base" --build-arg "CPU_BUILD_IMAGE=$base"
  )
fi
images_key() { # -> key of both images' inputs, given the bases' ids
  local bases=""
  if [[ "$bases_mode" == debian ]]; then
    bases="$(cat "$(id_file "$base")")"
  fi
  {
    (cd "$context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    (cd "$root" && find hack/images -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    printf '%s\n' "${build_args[@]}" "$bases_mode" "$bases" "$operator_ref" "$trainer_ref"
  } | sha
}

tar_path() { echo "$images_dir/$1-$2.tar"; } # NAME KEY

# Tars of other keys take disk space (the trainer's: 7 GB), and other checkouts sharing this cache may be using
# theirs: before a new tar is made, the older ones beyond the $keep_tars - 1 most recently used go (a use
# touches the tar). A reader that must not lose a tar while it reads it holds a hard link to it.
keep_tars="${KUBETUNE_IMAGE_TARS_KEPT:-1}"
prune_tars() { # NAME KEEP
  find "$images_dir" -maxdepth 1 -name "$1-*.tar" -printf '%T@ %p\n' | sort -rn | tail -n +"$(($2 + 1))" \
    | cut -d' ' -f2- | xargs -r rm -f
  rm -f "$images_dir/$1"-*.tar.partial
}

# The size in bytes of the largest tar of NAME (empty when there is none): read before `prune_tars`, which may
# remove them all.
last_tar_bytes() { # NAME
  find "$images_dir" -maxdepth 1 -name "$1-*.tar" -printf '%s\n' | sort -rn | head -n 1
}

# Fails, naming the fix, when the filesystem that holds PATH has less than NEED_GB free (WHAT: what they are for).
check_room() { # NAME PATH NEED_GB WHAT FIX
  local free_gb
  free_gb=$(($(df --output=avail -k "$2" | tail -n 1) >> 20))
  if ((free_gb < $3)); then
    log "$1: not enough disk to build it: $3 GB needed ($4), $free_gb GB free on" \
      "$(df --output=target "$2" | tail -n 1). Free some space, or $5; \`du -sh $cache/*\` shows what the" \
      "cache holds."
    exit 1
  fi
}

# Docker's data root, as the running daemon reports it (the configured one if it cannot say).
docker_data_root() {
  docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo "${KUBETUNE_DOCKER_DATA:-$cache/docker/data}"
}

# A build of NAME needs room for the image in Docker, the daemon's export copy (`docker save` stages the whole
# image in the data root before streaming it), both on Docker's data root's filesystem, and the tar on the
# tars' filesystem: three times the image on one disk when they share it. LAST_BYTES, the size of an earlier
# tar of NAME (`last_tar_bytes`), gives its size; when empty, DEFAULT_GB. Fails, naming the disk and the fix,
# rather than stopping on ENOSPC minutes into a build.
need_room() { # NAME DEFAULT_GB LAST_BYTES
  local last="$3" size_gb data_root
  size_gb=$(((${last:-$(($2 << 30))} >> 30) + 1))
  data_root=$(docker_data_root)
  if [[ "$(stat -c %d "$data_root")" == "$(stat -c %d "$images_dir")" ]]; then
    check_room "$1" "$images_dir" $((3 * size_gb + 1)) \
      "3 x its $size_gb GB: the image, Docker's export copy, the tar" "point KUBETUNE_CACHE at a larger disk"
  else
    check_room "$1" "$data_root" $((2 * size_gb + 1)) \
      "2 x its $size_gb GB in Docker's data root $data_root: the image and Docker's export copy" \
      "point KUBETUNE_DOCKER_DATA at a larger disk"
    check_room "$1" "$images_dir" $((size_gb + 1)) "its $size_gb GB tar in $images_dir" \
      "point KUBETUNE_CACHE at a larger disk"
  fi
}

report() { # KEY: prints the two result lines
  echo "operator=$(tar_path operator "$1") $operator_ref"
  echo "trainer=$(tar_path "trainer-$variant" "$1") $trainer_ref"
}

bases_known() { [[ "$bases_mode" != debian || -s "$(id_file "$base")" ]]; }

if bases_known; then
  key=$(images_key)
  if [[ -f "$(tar_path operator "$key")" && -f "$(tar_path "trainer-$variant" "$key")" ]]; then
    log "images up to date (key $key): nothing to build"
    touch "$(tar_path operator "$key")" "$(tar_path "trainer-$variant" "$key")"
    report "$key"
    exit 0
  fi
fi

# --- a private Docker daemon ---------------------------------------------------------------------------------
log "building (the images of this tree are not in $images_dir yet); starting dockerd"
bash "$here/ensure-tools.sh"
daemon_dir=$(mktemp -d /tmp/kt-dockerd.XXXXXX)
docker_host=$(bash "$here/dockerd.sh" start "$daemon_dir")
docker() { DOCKER_HOST="$docker_host" DOCKER_CONFIG="$daemon_dir/client" DOCKER_BUILDKIT=0 "$docker_bin" "$@"; }
log "dockerd started ($docker_host, data root ${KUBETUNE_DOCKER_DATA:-$cache/docker/data})"

# --- the Debian base -----------------------------------------------------------------------------------------
ensure_base() { # REF PACKAGES
  local ref=$1 packages=$2 file recorded current
  file=$(id_file "$ref")
  recorded=$(cat "$file" 2>/dev/null || true)
  current=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)
  if [[ -n "$current" && "$current" == "$recorded" ]]; then
    return
  fi
  if [[ -z "$current" ]]; then
    log "making $ref from Debian $debian_suite's packages (mmdebstrap): $packages"
    local started=$SECONDS
    mmdebstrap --quiet --variant=minbase --include="$packages" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$debian_suite" - "${debian_mirrors[@]}" | docker import - "$ref" >/dev/null
    log "$ref made in $((SECONDS - started)) s"
    current=$(docker image inspect --format '{{.Id}}' "$ref")
  fi
  echo "$current" >"$file"
}
if [[ "$bases_mode" == debian ]]; then
  ensure_base "$base" "$base_packages"
fi
key=$(images_key)

# The machine's pip certificate bundle, for the build stages (never the final images: see the Dockerfile).
cert="${PIP_CERT:-}"
if [[ -z "$cert" ]]; then
  cert=$(python3 -m pip config get global.cert 2>/dev/null || true)
fi
if [[ -n "$cert" && -f "$cert" ]]; then
  cp "$cert" "$context/pip-cert.pem"
  log "pip in the build uses the certificate bundle $cert"
fi

# --- build and export ----------------------------------------------------------------------------------------
build() { # NAME TARGET REF DEPS_TARGET
  local name=$1 target=$2 ref=$3 deps=$4 tar started=$SECONDS
  tar=$(tar_path "$name" "$key")
  if [[ -f "$tar" ]]; then
    log "$name: $tar is up to date"
    touch "$tar"
    return
  fi
  local build_log="$images_dir/logs/$name.log"
  local last_bytes
  last_bytes=$(last_tar_bytes "$name") # (before the prune, which may remove every tar of $name)
  prune_tars "$name" "$((keep_tars - 1))"
  need_room "$name" "$room_gb" "$last_bytes"
  log "$name: building $ref (target $target; full log $build_log)"
  # The dependency stage gets a tag of its own, so that the prune below keeps it (and the stages under it)
  # as the next build's cache: a multi-stage build's other stages are untagged, "dangling", once it ends.
  if ! docker build --network host --target "$deps" --tag "kubetune.local/cache:$name-deps" "${build_args[@]}" \
    "$context" >"$build_log" 2>&1 ||
    ! docker build --network host --target "$target" --tag "$ref" "${build_args[@]}" "$context" \
    >>"$build_log" 2>&1; then
    log "$name: the build failed; the end of its log:"
    tail -n 40 "$build_log" >&2
    exit 1
  fi
  log "$name: built in $((SECONDS - started)) s ($(grep -c ' ---> Using cache' "$build_log") steps from cache)"
  # The legacy builder's cache is the image chain itself: what the tag no longer names (the previous build's
  # top layers, each a few GB for the trainer) only fills the disk. The current chain stays as the cache.
  docker image prune --force >/dev/null
  started=$SECONDS
  local size
  size=$(docker image inspect --format '{{.Size}}' "$ref" | numfmt --to=iec)
  docker save --output "$tar.partial" "$ref"
  mv "$tar.partial" "$tar"
  # The tar is the image's copy now. The dependency stage stays tagged as the next build's cache; the final
  # stage's layers would serve a build only if nothing of ours changed, and then this tar is up to date.
  docker image rm "$ref" >/dev/null
  docker image prune --force >/dev/null
  log "$name: saved $tar in $((SECONDS - started)) s: image $size, tar $(stat -c %s "$tar" | numfmt --to=iec)"
}
room_gb=1 build operator operator "$operator_ref" operator-deps
room_gb=7 build "trainer-$variant" trainer "$trainer_ref" trainer-deps
log "docker data root: $(du -sh "${KUBETUNE_DOCKER_DATA:-$cache/docker/data}" 2>/dev/null | cut -f1)"
report "$key"
