#!/usr/bin/env bash
# The test suite in two pytest sessions side by side, because the two halves wait on different things:
#   cpu     — training in local processes (tests/trainer, tests/runner, tests/spec, the trainer benchmark):
#             torch on the CPU, nothing else;
#   cluster — everything else: the API server, KWOK, Kueue, the real nodes and their containers, Helm, the
#             images. Most of its time is spent waiting (timeouts, kubelets, image imports), not computing.
# Run one after the other on 2 cores they leave the CPU idle for about half of the time; side by side the
# suite ends when the longer half does. Each session has its own temporary folder; the cpu lane's report is
# printed after the cluster lane's, and the script fails if either lane failed.
#
#   bash hack/test-lanes.sh [PYTEST_ARGS...]   # with arguments: one session over tests/ with them, no lanes
set -uo pipefail
cd "$(dirname "$0")/.."

if (($#)); then
  exec python -m pytest tests "$@"
fi

cpu_tests=(tests/trainer tests/runner tests/spec tests/benchmarks/test_trainer_benchmark.py)
ignore=()
for path in "${cpu_tests[@]}"; do ignore+=("--ignore=$path"); done

lanes=$(mktemp -d /tmp/kubetune-lanes.XXXXXX)
cpu_log="$lanes/cpu.log"
log() { printf '[test-lanes %(%T)T] %s\n' -1 "$*"; }

python -m pytest "${cpu_tests[@]}" --basetemp="$lanes/cpu" >"$cpu_log" 2>&1 &
cpu_pid=$!
# Ctrl-C or a CI timeout must not leave the background lane training.
trap 'kill -INT "$cpu_pid" 2>/dev/null; wait "$cpu_pid" 2>/dev/null; exit 130' INT TERM

started=$SECONDS
log "cpu lane started in the background (${cpu_tests[*]}); its report follows the cluster lane's"
python -m pytest tests "${ignore[@]}" --basetemp="$lanes/cluster"
cluster_rc=$?
cluster_time=$((SECONDS - started))
wait "$cpu_pid"
cpu_rc=$?
cpu_time=$((SECONDS - started))

log "cpu lane's report:"
cat "$cpu_log"
log "cluster lane: exit ${cluster_rc}, ${cluster_time} s; cpu lane: exit ${cpu_rc}, ended after ${cpu_time} s"
if ((cluster_rc || cpu_rc)); then
  log "temporary folders kept for a look: $lanes"
  exit 1
fi
rm -rf "$lanes"
