"""Brings a local cluster up in the foreground for a developer: `bash hack/cluster/up.sh`.

Prints `export KUBECONFIG=...` and keeps the cluster running until Ctrl-C (or SIGTERM), then stops
every process and removes the work directory (unless --keep).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from tests.kube.binaries import BinariesNotFound
from tests.kube.harness import LocalCluster
from tests.kube.processes import ProcessFailed


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Runs the cluster until interrupted; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="hack/cluster/up.sh", description=__doc__)
    parser.add_argument("--gpu-nodes", type=int, default=2, help="KWOK GPU nodes to create (default 2)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="nvidia.com/gpu per node (default 8)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, etcd data) at exit"
    )
    args = parser.parse_args(argv)
    # SIGTERM (e.g. from a process supervisor) stops the cluster as cleanly as Ctrl-C does; SIGINT is
    # set explicitly because a shell that starts us in the background would have it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        cluster = LocalCluster(
            gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node, keep_workdir=args.keep
        )
    except BinariesNotFound as error:
        print(error, file=sys.stderr)
        return 2
    try:
        with cluster:
            print(
                f"# cluster up in {cluster.startup_seconds:.1f}s; logs in {cluster.workdir / 'logs'}",
                flush=True,
            )
            print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
            print(f"export PATH={cluster.binaries.bin_dir}:$PATH", flush=True)
            print("# Ctrl-C stops it", flush=True)
            while True:
                cluster.check_running()
                time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 0
    except ProcessFailed as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
