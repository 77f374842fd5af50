"""Where a queued job's time goes, on the API server's clock: its audit log, read per job (benchmark helper).

For each FineTuneJob of a namespace, from the audit log written under AUDIT_POLICY:

    applied ─► Workload created ─► admitted ─► operator reads the job ─► operator reads the Workload ─► 4th pod created
             (operator's first      (Kueue)    (watch delivery + the     (the reconcile's first reads)   (the reconcile's
              reconcile)                         operator's work queue)                                   writes)

* applied: the API server answered the FineTuneJob's create;
* Workload created: it answered the operator's create of `finetunejob-<job>`;
* admitted: it answered Kueue's write of the Workload's status that carries `status.admission` (Kueue's
  scheduler sets QuotaReserved and, with no admission checks, Admitted in that same write);
* picked up: the operator's reconcile that acts on the admission began, i.e. its GET of the job (received by
  the server) just before its first GET of the Workload received after the admission;
* pods created: the API server answered the create of the job's last worker pod.

Every timestamp is the API server's (microseconds), so no client or watch delay is in these figures except
where a segment *is* one (admitted → picked up: Kueue's write reaching the operator through its watch, then
waiting in the operator for a thread).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Kueue's status writes of Workloads with their request body (to find the one that admits); the operator's
# status patches of jobs (the end of its first reconcile); creates, GETs and LISTs of jobs, Workloads,
# ResourceFlavors and pods (the operator's reconcile, request by request). Nothing else: no watch, no Event,
# no status update of a pod.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Request
    verbs: [update, patch]
    resources:
      - group: kueue.x-k8s.io
        resources: [workloads/status]
  - level: Metadata
    verbs: [patch]
    resources:
      - group: kubetune.io
        resources: [finetunejobs/status]
  - level: Metadata
    verbs: [get, list, create]
    resources:
      - group: ""
        resources: [pods]
      - group: kubetune.io
        resources: [finetunejobs]
      - group: kueue.x-k8s.io
        resources: [workloads, resourceflavors]
  - level: None
"""

WORKLOAD_PREFIX = "finetunejob-"  # kubetune.controller.queueing.workload_name
SEGMENTS = (
    ("applied -> Workload created", "applied", "workload_created"),
    ("Workload created -> admitted (Kueue)", "workload_created", "admitted"),
    ("admitted -> the job's first reconcile ended", "admitted", "first_done"),
    ("that -> the next reconcile began", "first_done", "picked_up"),
    ("reconcile began -> its reads answered", "picked_up", "reads_done"),
    ("reads answered -> pods created", "reads_done", "pods_created"),
    ("admitted -> pods created", "admitted", "pods_created"),
)


@dataclass
class JobTimes:
    """One job's moments on the API server's clock (seconds since the epoch; None: not in the log)."""

    applied: float | None = None
    workload_created: float | None = None
    admitted: float | None = None
    # The end of the operator's first reconcile of the job (its first status patch answered), or the admission
    # if that came later: the admitted reconcile cannot begin before (one reconcile of a job at a time).
    first_done: float | None = None
    picked_up: float | None = None
    reads_done: float | None = None  # that reconcile's GET job, LIST pods and GET Workload all answered
    pods_created: float | None = None
    first_pod_asked: float | None = None  # the first worker pod's create received

    def segment(self, start: str, end: str) -> float | None:
        began, ended = getattr(self, start), getattr(self, end)
        return None if began is None or ended is None else ended - began


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _admits(event: dict[str, Any]) -> bool:
    """True for a Workload status write whose body carries an admission (Kueue's scheduler admitting it; the
    operator's requeue writes `admission: null`)."""
    status = (event.get("requestObject") or {}).get("status") or {}
    return bool(status.get("admission"))


def _job_selected(uri: str) -> str | None:
    """The job whose pods a LIST asks for (labelSelector ...job-name=<job>), None for any other list."""
    query = parse_qs(urlsplit(uri).query)
    for selector in query.get("labelSelector", []):
        for term in selector.split(","):
            key, _, value = term.partition("=")
            if key.endswith("/job-name") and value:
                return value
    return None


def read_job_times(audit_log: Path, namespace: str, workers: int) -> dict[str, JobTimes]:
    """Each job of `namespace` in `audit_log` (written under AUDIT_POLICY) with its moments; `workers`: pods
    per job (pods_created stays None for a job with fewer created pods in the log). A job admitted more than
    once (preempted, readmitted) is timed by its first admission."""
    jobs: dict[str, JobTimes] = {}
    job_gets: dict[str, list[float]] = {}
    workload_gets: dict[str, list[float]] = {}
    pods: dict[str, list[float]] = {}
    reads: dict[str, list[tuple[float, float]]] = {}  # (received, answered) of the operator's reads per job
    first_patch: dict[str, float] = {}  # the operator's first status patch of each job, answered
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace:
            continue
        code = (event.get("responseStatus") or {}).get("code")
        resource, name, verb = ref.get("resource"), ref.get("name") or "", event.get("verb")
        answered = _seconds(event["stageTimestamp"])
        received = _seconds(event["requestReceivedTimestamp"])
        if resource == "finetunejobs":
            if verb == "create" and code == 201:
                jobs.setdefault(name, JobTimes()).applied = answered
            elif verb == "get":
                job_gets.setdefault(name, []).append(received)
                reads.setdefault(name, []).append((received, answered))
            elif verb == "patch" and ref.get("subresource") == "status" and code == 200:
                first_patch.setdefault(name, answered)
        elif resource == "workloads" and name.startswith(WORKLOAD_PREFIX):
            job = name[len(WORKLOAD_PREFIX) :]
            times = jobs.setdefault(job, JobTimes())
            if verb == "create" and code == 201:
                times.workload_created = times.workload_created or answered
            elif verb == "get" and not ref.get("subresource"):
                workload_gets.setdefault(job, []).append(received)
                reads.setdefault(job, []).append((received, answered))
            elif ref.get("subresource") == "status" and code == 200 and _admits(event):
                times.admitted = times.admitted or answered
        elif resource == "pods" and verb == "create" and code == 201 and "-worker-" in name:
            job = name.rsplit("-worker-", 1)[0]
            pods.setdefault(job, []).append(answered)
            asked = jobs.setdefault(job, JobTimes()).first_pod_asked
            jobs[job].first_pod_asked = received if asked is None else min(asked, received)
        elif resource == "pods" and verb == "list":
            selected = _job_selected(event.get("requestURI") or "")
            if selected:
                reads.setdefault(selected, []).append((received, answered))
    for job, times in jobs.items():
        if len(pods.get(job, ())) >= workers:
            times.pods_created = sorted(pods[job])[workers - 1]
        if times.admitted is None:
            continue
        times.first_done = max(times.admitted, first_patch.get(job, times.admitted))
        after = [at for at in sorted(workload_gets.get(job, ())) if at >= times.admitted]
        if after:
            # The reconcile that saw the admission began with its GET of the job, just before that read.
            before = [at for at in job_gets.get(job, ()) if at <= after[0]]
            times.picked_up = max(before) if before and max(before) >= times.admitted else after[0]
            until = times.first_pod_asked if times.first_pod_asked is not None else float("inf")
            done = [end for began, end in reads.get(job, ()) if times.picked_up <= began and end <= until]
            times.reads_done = max(done) if done else None
    return {job: times for job, times in jobs.items() if times.applied is not None}


def summarize(
    times: dict[str, JobTimes], groups: dict[str, list[str]]
) -> list[tuple[str, str, int, float, float, float]]:
    """(group, segment, jobs, p50, p99, max) for every segment and group of job names (`groups`)."""
    rows = []
    for group, names in groups.items():
        for label, start, end in SEGMENTS:
            values = sorted(
                value
                for value in (times[n].segment(start, end) for n in names if n in times)
                if value is not None
            )
            if not values:
                continue
            p50 = values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1 :][:2]) / 2
            p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
            rows.append((group, label, len(values), p50, p99, values[-1]))
    return rows


def waves(times: dict[str, JobTimes]) -> dict[str, list[str]]:
    """The jobs admitted while jobs were still being applied (before the last create), the rest, and all."""
    last_applied = max((t.applied for t in times.values() if t.applied is not None), default=0.0)
    admitted = {name: t for name, t in times.items() if t.admitted is not None}
    during = sorted(
        name for name, t in admitted.items() if t.admitted is not None and t.admitted <= last_applied
    )
    after = sorted(name for name in admitted if name not in during)
    return {"admitted during the applies": during, "admitted after": after, "all": sorted(admitted)}
