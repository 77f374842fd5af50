"""What the randomized soak (test_soak_cluster.py) watches and does beside the jobs: a ledger of every
worker pod the API server reports (duplicates), the operator process's CPU and peak RSS (from /proc), and the
`kill -9` + restart of the operator at random moments."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubetune.controller import names

from tests.operator.conftest import OperatorProcess

WORKER_SELECTOR = f"{names.LABEL_ROLE}={names.ROLE_WORKER}"


@dataclass(frozen=True)
class WorkerSlot:
    """One worker of one gang attempt: there must never be two pods for it."""

    job: str
    attempt: int
    rank: int

    def __str__(self) -> str:
        return f"{self.job} attempt {self.attempt} rank {self.rank}"


class PodLedger:
    """Follows every worker pod of a namespace through a watch (in a thread) and records two violations:
    - a worker slot (job, attempt, rank) filled by two pods over the soak (a duplicate, or a pod of an attempt
      deleted and created again within that attempt);
    - live pods (not being deleted) of two attempts of one job at the same moment (a gang restart that did
      not wait for the old gang).
    The watch resumes from the last resourceVersion it saw, so no event in between is lost; a 410 Gone
    (history compacted) is recorded in `relists`, since a relist can miss a short-lived pod."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.slots: dict[WorkerSlot, set[str]] = defaultdict(set)
        self.live: dict[str, tuple[WorkerSlot, bool]] = {}  # uid -> (slot, being deleted)
        self.timelines: dict[str, list[str]] = defaultdict(list)  # job -> its pods' events, for messages
        self._began = time.monotonic()
        self.violations: list[str] = []
        self.relists = 0
        self.events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="pod-ledger", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops the watch; raises what broke the watch thread, if anything did."""
        self._stop.set()
        self._thread.join(15)
        if self._error is not None:
            raise AssertionError(f"the pod watch failed: {self._error!r}") from self._error

    def timeline(self, job: str, last: int = 30) -> str:
        """The last events of `job`'s pods, one a line (seconds since the ledger began)."""
        return "\n".join(f"    {line}" for line in self.timelines.get(job, [])[-last:])

    @property
    def pods_seen(self) -> int:
        return sum(len(uids) for uids in self.slots.values())

    def _list(self, core: Any) -> str:
        listed = core.list_namespaced_pod(self.namespace, label_selector=WORKER_SELECTOR)
        self.live.clear()
        for pod in listed.items:
            self.observe("ADDED", pod)
        return str(listed.metadata.resource_version)

    def _follow(self) -> None:
        try:
            core = client.CoreV1Api(self.api)
            version = self._list(core)
            while not self._stop.is_set():
                try:
                    stream = watch.Watch().stream(
                        core.list_namespaced_pod,
                        self.namespace,
                        label_selector=WORKER_SELECTOR,
                        resource_version=version,
                        timeout_seconds=2,  # (short, so that stop() is honoured soon)
                    )
                    for event in stream:
                        pod = event["object"]
                        version = pod.metadata.resource_version
                        self.observe(event["type"], pod)
                except ApiException as error:
                    if error.status != 410:
                        raise
                    self.relists += 1
                    version = self._list(core)
        except BaseException as error:  # reported by stop()
            self._error = error

    def observe(self, kind: str, pod: Any) -> None:
        """Record one watch event of a worker pod."""
        self.events += 1
        labels = pod.metadata.labels or {}
        try:
            slot = WorkerSlot(
                labels[names.LABEL_JOB], int(labels[names.LABEL_ATTEMPT]), int(labels[names.LABEL_NODE_RANK])
            )
        except (KeyError, ValueError):
            return
        uid = pod.metadata.uid
        deleting = pod.metadata.deletion_timestamp is not None
        self.timelines[slot.job].append(
            f"{time.monotonic() - self._began:6.1f}s {kind} {pod.metadata.name} attempt {slot.attempt} "
            f"uid {uid[:8]} {pod.status.phase}{' deleting' if deleting else ''}"
        )
        if kind == "DELETED":
            self.live.pop(uid, None)
            return
        if uid not in self.slots[slot]:
            self.slots[slot].add(uid)
            if len(self.slots[slot]) > 1:
                self.violations.append(
                    f"{len(self.slots[slot])} pods for {slot}: uids {sorted(self.slots[slot])}"
                )
        self.live[uid] = (slot, deleting)
        attempts = {s.attempt for s, deleting in self.live.values() if s.job == slot.job and not deleting}
        if len(attempts) > 1:
            self.violations.append(f"{slot.job}: live pods of attempts {sorted(attempts)} at once")


@dataclass
class OperatorUsage:
    """CPU seconds and peak resident memory of the operator process, across its restarts, read from /proc
    (sampled in a thread, and by the chaos thread right before each kill)."""

    operator: OperatorProcess
    interval: float = 0.5
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    baseline: dict[int, float] = field(default_factory=dict)  # CPU spent before the soak began
    peak_rss_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.sample()
        self.baseline = dict(self.cpu_by_pid)
        self._thread = threading.Thread(target=self._run, name="operator-usage", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def cpu_seconds(self) -> float:
        """CPU (user + system) the operator processes used since `start`."""
        return sum(self.cpu_by_pid.values()) - sum(self.baseline.values())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Read the live operator process's CPU time and high-water RSS (a process gone meanwhile is kept at
        its last sample)."""
        process = self.operator.process
        if process is None:
            return
        pid = process.pid
        proc = Path("/proc") / str(pid)
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            status = (proc / "status").read_text()
        except OSError:
            return
        # (fields after the command: state is field 3 of stat, so utime/stime, fields 14/15, are [11]/[12])
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        peak = 0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
        with self._lock:
            self.cpu_by_pid[pid] = max(cpu, self.cpu_by_pid.get(pid, 0.0))
            self.peak_rss_bytes = max(self.peak_rss_bytes, peak)


class OperatorChaos:
    """Kills the operator with SIGKILL, in a thread, whatever the jobs are doing at the time: for each
    (uptime, downtime) of the schedule, `uptime` seconds after it last became healthy, and starts it again
    `downtime` seconds later."""

    def __init__(
        self, operator: OperatorProcess, usage: OperatorUsage, schedule: list[tuple[float, float]]
    ) -> None:
        self.operator = operator
        self.usage = usage
        self.schedule = schedule
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator-chaos", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No more kills; waits for a restart in progress. Raises when the operator could not restart."""
        self._stop.set()
        self._thread.join(60)
        if self._error is not None:
            raise AssertionError(f"the operator did not come back after kill -9: {self._error}")

    def _run(self) -> None:
        try:
            for uptime, downtime in self.schedule:
                if self._stop.wait(uptime):
                    return
                self.usage.sample()
                self.operator.kill()
                self.kills += 1
                time.sleep(downtime)  # (a restart is never skipped: the soak ends with an operator running)
                self.operator.start()  # (returns once it is healthy)
        except BaseException as error:  # reported by stop()
            self._error = error
