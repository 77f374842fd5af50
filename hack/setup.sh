#!/usr/bin/env bash
# Everything `make test` needs, built or reused from $KUBETUNE_CACHE, and printed as shell assignments:
#
#   setup=$(bash hack/setup.sh) && eval "$setup"   # venv, mlflow_venv, cluster_bin, nodes_bin, kueue_bin, s3_bin, ...
#
# System packages come first, one apt at a time (apt holds a lock). The builds then run side by side in three
# lanes, because on a cold machine they wait on different things: the virtualenv on PyPI downloads and the
# disk (and the MLflow server's own venv), the images on PyPI again and Docker's layer commits, the Go-built
# parts (the control plane and the coscheduling scheduler, node binaries, Kueue, the S3 server, Kubeflow
# Trainer and JobSet) on the CPU. Warm, every lane is a cache hit of a few seconds.
# Each lane's stderr is printed with its name as a prefix; a failed lane fails the whole setup.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { printf '[setup %(%T)T] %s\n' -1 "$*" >&2; }

started=$SECONDS
bash hack/ensure-system-tools.sh
bash hack/nodes/install-packages.sh
bash hack/images/ensure-tools.sh
log "system packages ready in $((SECONDS - started)) s"

results=$(mktemp -d /tmp/kt-setup.XXXXXX)
trap 'rm -rf "$results"' EXIT

lane() { # NAME COMMAND...: runs COMMAND with its stderr prefixed; stdout to $results/NAME; time to NAME.time
  local name=$1 lane_start=$SECONDS
  shift
  { "$@" 2>&1 1>&3 | sed -u "s/^/[$name] /" >&2; } 3>"$results/$name"
  echo "$((SECONDS - lane_start))" >"$results/$name.time"
}
go_parts() {
  bash hack/cluster/build.sh | tail -n 1 >"$results/cluster_bin"
  # Right after the control plane: it compiles against the same Kubernetes, so only its plugin is new.
  bash hack/coscheduling/build.sh | tail -n 1 >"$results/coscheduling_bin"
  bash hack/nodes/build.sh | tail -n 1 >"$results/nodes_bin"
  bash hack/kueue/build.sh | tail -n 1 >"$results/kueue_bin"
  bash hack/s3/build.sh | tail -n 1 >"$results/s3_bin"
  bash hack/peer/build.sh | tail -n 1 >"$results/peer_bin"
}
python_parts() {
  bash hack/setup-venv.sh | tail -n 1 >"$results/venv"
  bash hack/mlflow/setup.sh | tail -n 1 >"$results/mlflow_venv"
}

declare -A pids=()
lane venv python_parts &
pids[venv]=$!
lane go go_parts &
pids[go]=$!
lane images bash hack/images/build.sh &
pids[images]=$!

failed=()
for name in "${!pids[@]}"; do
  wait "${pids[$name]}" || failed+=("$name")
done
if ((${#failed[@]})); then
  log "failed: ${failed[*]} (their output is above, prefixed with the lane's name)"
  exit 1
fi
log "ready in $((SECONDS - started)) s: venv $(cat "$results/venv.time") s, Go-built parts $(cat "$results/go.time") s," \
  "images $(cat "$results/images.time") s"

printf 'venv=%q\n' "$(cat "$results/venv")"
printf 'mlflow_venv=%q\n' "$(cat "$results/mlflow_venv")"
printf 'cluster_bin=%q\n' "$(cat "$results/cluster_bin")"
printf 'nodes_bin=%q\n' "$(cat "$results/nodes_bin")"
printf 'kueue_bin=%q\n' "$(cat "$results/kueue_bin")"
printf 's3_bin=%q\n' "$(cat "$results/s3_bin")"
printf 'peer_bin=%q\n' "$(cat "$results/peer_bin")"
printf 'coscheduling_bin=%q\n' "$(cat "$results/coscheduling_bin")"
