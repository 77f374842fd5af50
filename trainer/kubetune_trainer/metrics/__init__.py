"""Local `evaluate` metric modules (hub metric scripts cannot be fetched offline), loaded by path.

Each `<name>/<name>.py` is an `evaluate.Metric`; `kubetune_trainer.evaluation.load_metric(name)` loads it.
The folders are packages only so that setuptools ships them; evaluate imports the scripts itself.
"""
