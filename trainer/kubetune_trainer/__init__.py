"""kubetune_trainer: the containerized trainer behind `kubetune train` (torch, transformers, accelerate).

Modules, one stage each: `settings` (the job + node context a run needs), `modelio` (tokenizer and model),
`data` (dataset, labels, tokenization, loaders), `sampling` (deterministic, length-grouped order), `optim`
(AdamW + schedule), `evaluation` (local `evaluate` metrics), `checkpoints` (save, find, resume), `reporting`
(progress sinks), `preemption` (SIGTERM → agreed stop), `loop` (the Accelerate training loop), `worker`
(the per-process entry point), `node_launcher` (one node: config files + `accelerate launch`), and
`synthetic` (license-free test data and tiny models).

Importing this package does not import torch; the modules that need it do.
"""

__all__: list[str] = []
