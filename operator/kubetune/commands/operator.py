"""`kubetune operator`: run the FineTuneJob operator (kopf underneath)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the FineTuneJob operator",
        description=(
            "Watch FineTuneJobs (in all namespaces, or the ones given) and run their worker pods. "
            "Uses the in-cluster ServiceAccount, else $KUBECONFIG."
        ),
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeat for several; default: all namespaces)",
    )
    parser.add_argument(
        "--image",
        default=os.environ.get("KUBETUNE_TRAINER_IMAGE"),
        help="trainer image for jobs that set none (default: $KUBETUNE_TRAINER_IMAGE or the release image)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0 disables; default 9090)"
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=8080,
        help="liveness endpoint /healthz port (0 disables; default 8080)",
    )
    parser.add_argument(
        "--peering", default="kubetune", help="kopf peering name (replicas sharing it: one active)"
    )
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument("--priority", type=int, default=0, help="peering priority (highest active wins)")
    parser.add_argument("--threads", type=int, default=16, help="parallel reconciles (default 16)")
    parser.add_argument(
        "--backoff-seconds", type=float, default=10.0, help="first gang-restart delay; doubles per failure"
    )
    parser.add_argument("--backoff-max-seconds", type=float, default=360.0, help="gang-restart delay cap")
    parser.add_argument(
        "--terminating-timeout-seconds",
        type=float,
        default=300.0,
        help="force-delete (grace 0) a worker still Terminating this long after its grace period ended "
        "(a lost node); default 300",
    )
    parser.add_argument(
        "--child-retry-seconds",
        type=float,
        default=10.0,
        help="retry a child (Service, ConfigMap, ...) that could not be created after this long; default 10",
    )
    parser.add_argument(
        "--kueue",
        action="store_true",
        help="Kueue integration: a job labelled kueue.x-k8s.io/queue-name waits in that LocalQueue and runs "
        "only once Kueue admits its whole gang (needs the Kueue CRDs and the KUEUE_RULES permissions)",
    )
    parser.add_argument(
        "--coscheduling",
        action="store_true",
        help="coscheduling integration: a job with spec.kubernetes.podGroupPolicy.coscheduling gets a "
        "scheduling.x-k8s.io PodGroup for its gang (needs scheduler-plugins' PodGroup CRD and the "
        "COSCHEDULING_RULES permissions)",
    )
    parser.add_argument(
        "--log-format", choices=("json", "plain", "full"), default="json", help="log format (default json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(handler=run)


def _leave_out_official_client() -> None:
    """kopf imports the official `kubernetes` package's client when kopf is imported, only to recognise that
    client's model objects (kopf/_cogs/helpers/thirdparty.py), which the operator never hands it; the import
    costs about 30 MB of memory (it pulls google-auth, oauthlib, requests, cryptography; benchmarks/README.md).
    So this process marks the package absent before importing kopf (an import of it raises ImportError, which
    kopf expects). `controller.connection` brings it back for kubeconfigs only its loader reads."""
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT. Returns 0 on a clean stop."""
    _leave_out_official_client()
    import kopf

    from kubetune.controller.children import DEFAULT_IMAGE
    from kubetune.controller.kube import Kube, load_client_config
    from kubetune.controller.metrics import OperatorMetrics
    from kubetune.controller.plan import PlanOptions
    from kubetune.controller.reconciler import Reconciler
    from kubetune.controller.wiring import OperatorSettings, run_operator

    formats = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}
    kopf.configure(verbose=args.verbose, log_format=formats[args.log_format])
    logging.getLogger("kubetune").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # kopf logs every handled watch event at INFO: too chatty for pods
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    options = PlanOptions(
        default_image=args.image or DEFAULT_IMAGE,
        backoff_base_seconds=args.backoff_seconds,
        backoff_max_seconds=args.backoff_max_seconds,
        terminating_timeout_seconds=args.terminating_timeout_seconds,
        child_retry_seconds=args.child_retry_seconds,
        kueue=args.kueue,
        coscheduling=args.coscheduling,
    )
    reconciler = Reconciler(Kube(load_client_config()), options, metrics, threads=args.threads)
    settings = OperatorSettings(
        namespaces=tuple(args.namespace),
        peering_name=args.peering,
        standalone=args.standalone,
        priority=args.priority,
        kueue=args.kueue,
    )
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    print(
        f"kubetune operator: watching {', '.join(args.namespace) or 'all namespaces'}; "
        f"metrics :{args.metrics_port or '-'}, health :{args.health_port or '-'}",
        file=sys.stderr,
        flush=True,
    )
    run_operator(reconciler, settings, liveness_endpoint=liveness)
    return 0
