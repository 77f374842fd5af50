"""The local runner behind `kubetune run`: a FineTuneJob on one machine as several simulated nodes.

plan (output folder, resolved job, node environments) → processes (one `kubetune train` per node) →
supervisor (progress, failures, Ctrl-C, watchdog) → report (metrics table, loss curve, report.md).
Nothing here imports torch: the nodes do.
"""

from kubetune_trainer.runner.local import RunOptions, run_local
from kubetune_trainer.runner.supervisor import WatchdogLimits

__all__ = ["RunOptions", "WatchdogLimits", "run_local"]
