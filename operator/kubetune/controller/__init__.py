"""The FineTuneJob operator: `spec` (pydantic) → `plan` (pure) → `reconciler` (I/O only), driven by kopf.

Modules, in the order a reconcile uses them:

- `names`     deterministic names and labels of every child (so a restarted operator adopts, never duplicates);
- `observe`   worker pods (API JSON) → the few facts the planner decides on (phase, exit code, stuck reason);
- `plan`      the pure decision: job + pods + time → status, pods to create/delete, Events, when to look again;
- `failures`  pure: the Failure of an ended attempt, its history record, exhausted limits, stuck pods;
- `child_report` pure: children's problems folded into the plan (condition, Events, holding the job);
- `children`  pure builders of the Service, ConfigMap, progress RBAC and worker pods (one plugin per concern);
- (the status models live beside the spec: `kubetune.spec.status`);
- `kube`      the handful of REST calls (fresh GET/LIST, create, server-side apply, status merge patch);
- `ownership` who controls an existing object under a child's name (ours, a deleted job's, someone else's);
- `child_sync` create-only writes of the Service, ConfigMap and RBAC, problems reported, never raised;
- `reconciler` one reconcile: read job + pods, plan, write children, workers and status;
- `workqueue` coalesced per-job requests on a thread pool, requeue timers, error backoff, pause (peering);
- `event_recorder` Events on the job, posted off the reconcile path;
- `wiring`    kopf: watch events (server-side label selectors) → work-queue requests, peering, liveness;
- `metrics`   Prometheus metrics; `rbac` the operator's PolicyRules (the chart's ClusterRole comes from it).
- `status_policy` the ValidatingAdmissionPolicy that keeps workers from changing the operator's status fields.

Live progress (rank 0 → status) with least privilege: each job gets a ServiceAccount `<job>-worker` and a Role
allowing only `get`/`patch` on `finetunejobs/status` with `resourceNames: [<job>]`; the workers run as it and
`kubetune.status_sink` merge-patches `status.progress` and `status.metrics`. Nothing else is reachable with
that token (no spec, no other job, no pods or secrets), and within the status the chart's
ValidatingAdmissionPolicy (`status_policy`) refuses any change but progress and metrics. Kubeflow Trainer's KEP-2779 alternative (pods push to
the controller, authenticated by TokenReview) needs a network path from every pod to the operator and a
listener in it; the per-job Role gives the same isolation with only the API server in between. Final metrics
do not depend on it: rank 0's termination message carries the JobSummary, which the operator reads from the
pod when the job ends (runPolicy.reportProgress: false turns the live path off and mounts no token at all).
"""
