#!/usr/bin/env bash
# A private Docker daemon for building and testing kubetune's images, which never touches the host's network.
#
#   bash hack/images/dockerd.sh start DIR   # starts dockerd, waits until it answers, prints its DOCKER_HOST
#   bash hack/images/dockerd.sh stop DIR    # stops the daemon started with the same DIR
#
# DIR (short: unix socket paths are limited to 107 bytes) holds the daemon's socket, pid file, exec root and
# log; its data (images, layers, the legacy builder's cache) lives in $KUBETUNE_CACHE/docker/data, so later
# runs reuse it. The daemon gets no bridge, no iptables rules and no IP masquerading: containers and builds
# must use `--network host` (or none). One daemon at a time per data root: a lock held for the daemon's
# lifetime makes a second `start` wait for the first daemon to stop.
# Needs Debian's docker.io (dockerd, containerd, runc) and root.
set -euo pipefail

usage="usage: $0 start|stop DIR"
[[ $# -eq 2 ]] || { echo "$usage" >&2; exit 2; }
action=$1
dir=$2
cache="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
data_root="${KUBETUNE_DOCKER_DATA:-$cache/docker/data}"
socket="$dir/docker.sock"
pidfile="$dir/docker.pid"
log="$dir/dockerd.log"
# Debian's client (20.10, the daemon's version) before any newer one earlier on PATH.
docker_bin="${DOCKER:-$(if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else echo docker; fi)}"
docker_cli() { DOCKER_HOST="unix://$socket" DOCKER_CONFIG="$dir/client" "$docker_bin" "$@"; }
lock_wait="${KUBETUNE_DOCKERD_LOCK_WAIT:-1800}"

stop() {
  local pid waited=0
  [[ -f "$dir/wrapper.pid" ]] || return 0
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null && ((waited < 300)); do sleep 0.1; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
      echo "dockerd $pid did not stop within 30 s of SIGTERM: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # The flock wrapper exits with dockerd, releasing the data root's lock.
  local wrapper
  wrapper=$(cat "$dir/wrapper.pid")
  while kill -0 "$wrapper" 2>/dev/null; do sleep 0.1; done
  rm -f "$dir/wrapper.pid"
  # dockerd leaves its host-network sandbox (exec/netns/default, an nsfs mount) behind: unmount what is
  # mounted under DIR, deepest first, so that DIR can be removed.
  local mounts
  mounts=$(awk -v prefix="$dir/" 'index($2, prefix) == 1 { print $2 }' /proc/mounts | sort -r)
  for mount in $mounts; do umount "$mount" || umount -l "$mount" || true; done
}

case "$action" in
  stop)
    stop
    ;;
  start)
    command -v dockerd >/dev/null || {
      echo "dockerd not found: install Debian's docker.io (bash hack/images/ensure-tools.sh)" >&2
      exit 1
    }
    [[ ${#socket} -lt 100 ]] || { echo "$dir: too long for a unix socket path, use a shorter folder" >&2; exit 1; }
    mkdir -p "$dir/exec" "$dir/client" "$data_root"
    # Our own (empty) daemon.json: the host's /etc/docker/daemon.json must not change this daemon.
    echo '{}' >"$dir/daemon.json"
    lock="$data_root.lock"
    : >"$log"
    # setsid: the daemon is not in our process group, so a terminal's Ctrl-C reaches it only through `stop`.
    setsid flock --wait "$lock_wait" "$lock" \
      dockerd --config-file "$dir/daemon.json" \
      --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      --data-root "$data_root" --exec-root "$dir/exec" \
      --host "unix://$socket" --pidfile "$pidfile" \
      --log-level warn >>"$log" 2>&1 </dev/null &
    echo $! >"$dir/wrapper.pid"
    # Up to the lock's wait, then 2 minutes for the daemon itself.
    for _ in $(seq 1 $(((lock_wait + 120) * 10))); do
      if docker_cli version --format '{{.Server.Version}}' >/dev/null 2>&1; then
        echo "unix://$socket"
        exit 0
      fi
      if ! kill -0 "$(cat "$dir/wrapper.pid")" 2>/dev/null; then
        echo "dockerd exited before answering; its log ($log):" >&2
        tail -n 30 "$log" >&2
        rm -f "$dir/wrapper.pid"
        exit 1
      fi
      sleep 0.1
    done
    echo "dockerd did not answer on $socket within $((lock_wait + 120)) s; its log:" >&2
    tail -n 30 "$log" >&2
    stop
    exit 1
    ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
