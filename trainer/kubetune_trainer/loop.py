"""The training loop: Accelerate (DDP or DeepSpeed) with checkpoints, exact resume, evaluation and progress.

Shaped like accelerate's nlp_example: prepare, loop, backward, step. What production adds sits in small
helpers: `build_accelerator` (DeepSpeed from the spec), `Plan` (how many steps), `_resume` (newest complete
checkpoint, exact batch), `_after_step` (logging, evaluation, checkpoints, agreed stops) and `_finish`
(gathered model, model card, metrics.json).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from kubetune.contract import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED
from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune.launch import deepspeed_config
from kubetune.spec.models import EvalStrategy, FineTuneJobSpec, Task
from torch.utils.data import DataLoader

from kubetune_trainer import adapters, checkpoint_store, checkpoints
from kubetune_trainer.data import PreparedData, batches_per_process, build_collator, prepare_data
from kubetune_trainer.evaluation import evaluate_model, load_metric
from kubetune_trainer.hub_push import push_model
from kubetune_trainer.model_card import render_model_card
from kubetune_trainer.modelio import load_model, load_tokenizer, resolve_model_location, verify_weights
from kubetune_trainer.optim import build_optimizer, build_scheduler, describe_optimizer
from kubetune_trainer.preemption import StopAgreement, StopRequest
from kubetune_trainer.reporting import Reporter, Sink, default_sinks
from kubetune_trainer.sampling import EpochSampler
from kubetune_trainer.settings import RunSettings
from kubetune_trainer.storage import ObjectStore, open_store
from kubetune_trainer.tracking import TENSORBOARD_FOLDER, WANDB_FOLDER, Tracking

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def resolve_backend(backend: str) -> str:
    """spec.distribution.backend with "auto" resolved: nccl when CUDA is available, else gloo."""
    if backend != "auto":
        return backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def launched_world_size() -> int:
    """Processes in this launch (torchrun's WORLD_SIZE; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_accelerator(spec: FineTuneJobSpec, log_with: list[Any] | None = None) -> Any:
    """An Accelerator for the spec: accumulation, precision, backend, DeepSpeed when ZeRO is on, and the
    experiment trackers (`log_with`, kubetune_trainer.tracking)."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    training = spec.training
    plugin = None
    if spec.distribution.deepspeed.enabled:
        config = deepspeed_config(spec)
        # The launch may be smaller than the spec (kubetune train --single-process): DeepSpeed checks the product.
        config["train_batch_size"] = (
            training.per_device_train_batch_size
            * training.gradient_accumulation_steps
            * launched_world_size()
        )
        # The stage of the config DeepSpeed gets: a raw deepspeed.config's keys win over zeroStage, and with
        # stage 3 every rank must build the model already partitioned, not whole (zero.Init).
        stage = config.get("zero_optimization", {}).get("stage", 0)
        plugin = DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=stage == 3)
    handlers: list[Any] = []
    if launched_world_size() > 1:
        # Without an explicit backend Accelerate on CPU would not join the group DeepSpeed expects (gloo).
        backend = resolve_backend(spec.distribution.backend)
        handlers.append(
            InitProcessGroupKwargs(
                backend=backend, timeout=timedelta(seconds=spec.distribution.rendezvous_timeout_seconds)
            )
        )
    return Accelerator(
        # The loop accumulates itself (Trainer._train); accelerate must not divide the loss again.
        gradient_accumulation_steps=1,
        mixed_precision=str(training.mixed_precision),
        deepspeed_plugin=plugin,
        # We step the scheduler once per optimizer step ourselves; Accelerate's default would step it once per
        # process per step (and DeepSpeed once per step), so the schedule would differ between the two.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
        # Off by default: compiling costs minutes up front and recompiles on every new padded length.
        dynamo_backend="inductor" if training.torch_compile else "no",
        log_with=log_with or None,
    )


# Below this many optimizer steps a fine-tuning run rarely reaches its reference quality (MRPC with
# bert-base: 345 steps at batch 32); the trainer says so, with the numbers that produced the count.
FEW_STEPS = 100


def warn_about_few_steps(spec: FineTuneJobSpec, num_samples: int, num_processes: int, plan: Plan) -> None:
    """Log a warning naming the global batch when the run has fewer than FEW_STEPS optimizer steps."""
    training = spec.training
    if plan.total_steps >= FEW_STEPS or training.max_steps:
        return
    global_batch = training.per_device_train_batch_size * training.gradient_accumulation_steps * num_processes
    log.warning(
        "only %d optimizer steps: %d examples / global batch %d (perDeviceTrainBatchSize %d x "
        "gradientAccumulationSteps %d x %d processes) x %s epochs. Fine-tuning recipes usually take hundreds of "
        "steps (with warmupRatio ~0.1); consider a smaller per-device batch or more epochs, and scale "
        "learningRate with the global batch.",
        plan.total_steps,
        num_samples,
        global_batch,
        training.per_device_train_batch_size,
        training.gradient_accumulation_steps,
        num_processes,
        training.epochs,
    )


def fill_deepspeed_buckets(config: dict[str, Any], model_config: Any) -> None:
    """Size DeepSpeed's communication buckets in `config` (in place) from the model's hidden size, as
    transformers.Trainer fills in its "auto" values (reduce bucket h^2, ZeRO-3 prefetch 0.9 h^2, parameter
    persistence 10 h). Keys the raw spec.distribution.deepspeed.config sets are kept. The trainer calls it on
    the plugin's config before accelerator.prepare(), which hands that config to deepspeed.initialize."""
    hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "n_embd", None)
    if not hidden:
        return
    zero = config.setdefault("zero_optimization", {})
    zero.setdefault("reduce_bucket_size", hidden * hidden)
    if zero.get("stage") == 3:
        zero.setdefault("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
        zero.setdefault("stage3_param_persistence_threshold", 10 * hidden)


def weights_digest(model: torch.nn.Module) -> str:
    """The sha256 (hex) of `model`'s weights: every state-dict entry's name and values, in name order. Parameters
    that DeepSpeed ZeRO-3 partitions (marked with `ds_id`, whatever set the stage: zeroStage or a raw config) are
    gathered first, a collective that every rank must enter; on any other model nothing is gathered."""
    digest = hashlib.sha256()
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    gathered: Any = contextlib.nullcontext()
    if partitioned:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    with gathered:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Plan:
    """How long training runs, in the units the loop counts."""

    batches_per_epoch: int  # micro-batches per process per epoch
    steps_per_epoch: int  # optimizer steps per epoch
    total_steps: int

    @classmethod
    def for_spec(cls, spec: FineTuneJobSpec, num_samples: int, num_processes: int) -> Plan:
        training = spec.training
        batches = batches_per_process(num_samples, training.per_device_train_batch_size, num_processes)
        steps_per_epoch = math.ceil(batches / training.gradient_accumulation_steps)
        total = training.max_steps or math.ceil(training.epochs * steps_per_epoch)
        return cls(batches, steps_per_epoch, max(1, total))


@dataclass
class Outcome:
    """How the run ended: the summary (as in metrics.json) and the process exit code."""

    summary: JobSummary
    exit_code: int


@dataclass
class _Window:
    """Loss and throughput since the last step event."""

    started: float = field(default_factory=time.time)
    loss_sum: Any = 0.0  # becomes a tensor on the training device
    loss_weight: Any = 0.0  # micro-batches (classification) or target tokens (causal LM) behind loss_sum
    samples: int = 0

    def reset(self) -> None:
        self.started, self.loss_sum, self.loss_weight, self.samples = time.time(), 0.0, 0.0, 0


def optimizer_windows(loader: Iterable[Any], accumulation: int) -> Iterator[list[Any]]:
    """The loader's micro-batches grouped into optimizer steps: `accumulation` at a time, the last group of an
    epoch possibly shorter (as accelerate's accumulate() ends a step at the end of the data)."""
    window: list[Any] = []
    for batch in loader:
        window.append(batch)
        if len(window) == accumulation:
            yield window
            window = []
    if window:
        yield window


def target_tokens(batch: dict[str, Any]) -> Any:
    """Next-token targets in a causal-LM batch (labels shifted by one, -100 ignored), as a tensor."""
    return (batch["labels"][:, 1:] != -100).sum()


class Trainer:
    """One process's part of a training run. `run()` returns an Outcome; exceptions propagate after reporting."""

    def __init__(
        self, settings: RunSettings, extra_sinks: Iterable[Sink] = (), stop: StopRequest | None = None
    ) -> None:
        self.settings = settings
        self.spec = settings.spec
        # Rank 0 reports; known from the launcher before the process group exists, so setup errors are reported.
        self.reporter = Reporter(
            default_sinks(settings.context, settings.job, extra_sinks),
            enabled=os.environ.get("RANK", "0") == "0",
        )
        self.accelerator: Any = None
        self.stop = stop or StopRequest()
        self.state = checkpoints.TrainerState()
        self.started = time.time()
        self.resumed_from: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval_step = -1
        self.last_checkpoint_step = -1
        self.loss_total = 0.0
        self.loss_count = 0
        self.samples_at_start = 0
        self.step_at_start = 0
        self.loop_started = time.time()
        self.use_cache: bool | None = None  # the causal LM's config.use_cache, off while training
        # accelerator.save_state / load_state arguments (adapters keep frozen weights out of checkpoints)
        self.checkpoint_save_kwargs: dict[str, Any] = {}
        self.checkpoint_load_kwargs: dict[str, Any] = {}
        # Issue 13: output.objectStorage (None without it) and the experiment trackers (rank 0's).
        self.store: ObjectStore | None = None
        self.store_writable = False  # rank 0's access check passed: files may be sent even when the run fails
        self.tracking: Tracking | None = None

    # --- reporting ---------------------------------------------------------------------------------------

    def _event(self, kind: EventKind, **fields: Any) -> ProgressEvent:
        event = ProgressEvent(
            event=kind,
            step=self.state.step,
            total_steps=self.state.total_steps,
            epoch=round(self._fractional_epoch(), 4),
            **fields,
        )
        self.reporter.emit(event)
        if self.tracking is not None:
            self.tracking.log_event(event)
        return event

    def _fractional_epoch(self) -> float:
        plan = getattr(self, "plan", None)
        if plan is None:
            return float(self.state.epoch)
        return self.state.epoch + self.state.batches_in_epoch / plan.batches_per_epoch

    def _summary(self, outcome: EventKind, message: str | None = None) -> JobSummary:
        runtime = time.time() - self.started
        # Throughput over the training loop only (as transformers.Trainer reports it), not model loading.
        loop_runtime = time.time() - self.loop_started
        samples = self.state.samples_seen - self.samples_at_start
        return JobSummary(
            outcome=outcome,
            step=self.state.step,
            total_steps=self.state.total_steps,
            epoch=round(self._fractional_epoch(), 4),
            train_loss=self.loss_total / self.loss_count if self.loss_count else None,
            metrics=self.last_metrics,
            samples_per_second=samples / loop_runtime if loop_runtime > 0 else None,
            train_runtime_seconds=round(runtime, 3),
            world_size=self.accelerator.num_processes if self.accelerator else launched_world_size(),
            model_path=(self.store.uri("model") if self.store else str(self.settings.model_dir))
            if outcome == EventKind.FINISHED and self.spec.output.save_model
            else None,
            message=message,
        )

    # --- setup -------------------------------------------------------------------------------------------

    def _load(self) -> None:
        accelerator, spec = self.accelerator, self.spec
        token = os.environ.get("HF_TOKEN") or None
        location = resolve_model_location(spec.model.name)
        # The node's first process downloads and tokenizes; the others then read the caches.
        with accelerator.local_main_process_first():
            if accelerator.is_local_main_process:
                verify_weights(spec.model, location, token)
            self.tokenizer = load_tokenizer(spec.model, location, token)
            self.data: PreparedData = prepare_data(spec, self.tokenizer, token)
            self.metrics = {str(name): load_metric(str(name)) for name in spec.training.metrics}
        # Every rank at once: under ZeRO-3 from_pretrained partitions the weights, a collective. (Concurrent hub
        # downloads of the same file are serialised by huggingface_hub's file locks.)
        quantized = {}
        if spec.adapter is not None and spec.adapter.qlora is not None:
            quantized = adapters.quantization_load_kwargs(spec.adapter.qlora, accelerator.local_process_index)
        self.location = location
        self.model = load_model(spec.model, location, token, self.tokenizer, self.data.id2label, quantized)
        if spec.training.gradient_checkpointing:
            # Non-reentrant checkpointing works with DDP's hooks and with frozen inputs.
            enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers >= 5
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        if spec.adapter is not None:
            self.model = adapters.attach_adapter(
                self.model, spec.adapter, spec.training.gradient_checkpointing
            )
        if spec.model.task == Task.CAUSAL_LM:
            # Training never reads a KV cache, and transformers keeps packed texts apart (by their position ids)
            # only without one. `_save_model` restores the setting for generation.
            self.use_cache = getattr(self.model.config, "use_cache", None)
            self.model.config.use_cache = False

    def _build(self) -> None:
        accelerator, spec, training = self.accelerator, self.spec, self.spec.training
        on_gpu = accelerator.device.type == "cuda"
        # Tensor cores work on multiples of 8 (as transformers' examples pad on GPU).
        collator = build_collator(spec.model.task, self.tokenizer, pad_to_multiple_of=8 if on_gpu else None)
        self.sampler = EpochSampler(
            len(self.data.train),
            seed=training.seed,
            lengths=self.data.train_lengths if spec.dataset.group_by_length else None,
            batch_size=training.per_device_train_batch_size,
            num_processes=accelerator.num_processes,
        )
        train_loader = DataLoader(
            self.data.train,
            batch_size=training.per_device_train_batch_size,
            sampler=self.sampler,
            collate_fn=collator,
            num_workers=training.dataloader_workers,
            pin_memory=training.dataloader_pin_memory and on_gpu,
            # Starting an iterator draws a seed from this generator; from the global RNG that draw would shift the
            # dropout masks whenever a run resumes mid-epoch (or evaluates), breaking exact resume.
            generator=torch.Generator().manual_seed(training.seed),
        )
        self.plan = Plan.for_spec(spec, len(self.data.train), accelerator.num_processes)
        self.state.total_steps = self.plan.total_steps
        warn_about_few_steps(spec, len(self.data.train), accelerator.num_processes, self.plan)
        if spec.distribution.deepspeed.enabled:
            fill_deepspeed_buckets(accelerator.state.deepspeed_plugin.deepspeed_config, self.model.config)
        self.state.fingerprint = checkpoints.resume_fingerprint(spec, accelerator.num_processes)
        optimizer = build_optimizer(self.model, training, spec.distribution.deepspeed)
        scheduler = build_scheduler(optimizer, training, self.plan.total_steps)
        prepared = [self.model, optimizer, train_loader, scheduler]
        eval_loader = None
        if self.data.eval is not None and len(self.data.eval) > 0:
            eval_loader = DataLoader(
                self.data.eval,
                batch_size=training.per_device_eval_batch_size,
                shuffle=False,
                collate_fn=collator,
                generator=torch.Generator().manual_seed(training.seed),
            )
            prepared.append(eval_loader)
        prepared = accelerator.prepare(*prepared)
        self.model, self.optimizer, self.train_loader, self.scheduler = prepared[:4]
        log.info("optimizer: %s", describe_optimizer(self.optimizer))
        if spec.adapter is not None:
            deepspeed = spec.distribution.deepspeed.enabled
            self.checkpoint_save_kwargs, self.checkpoint_load_kwargs = adapters.checkpoint_kwargs(deepspeed)
            if not deepspeed:
                adapters.install_checkpoint_hooks(accelerator)
        self.eval_loader = prepared[4] if eval_loader is not None else None
        if len(self.train_loader) != self.plan.batches_per_epoch:
            log.warning(
                "expected %d batches per process, the prepared loader has %d",
                self.plan.batches_per_epoch,
                len(self.train_loader),
            )
            self.plan = Plan(len(self.train_loader), self.plan.steps_per_epoch, self.plan.total_steps)

    def _resume(self) -> None:
        from accelerate.utils import broadcast_object_list

        if not self.spec.checkpointing.resume:
            # Starting over: checkpoints of an earlier run would otherwise be taken for this run's later on.
            if self.accelerator.is_main_process and self.settings.checkpoints_dir.is_dir():
                log.info(
                    "checkpointing.resume is false: removing old checkpoints in %s",
                    self.settings.checkpoints_dir,
                )
                shutil.rmtree(self.settings.checkpoints_dir)
            if self.accelerator.is_main_process and self._checkpoints_in_store():
                assert self.store is not None
                self.store.remove(checkpoint_store.FOLDER)
            self.accelerator.wait_for_everyone()
            return
        if self._checkpoints_in_store():
            self._resume_from_store()
            return
        root = self.settings.checkpoints_dir
        # Rank 0 decides, so every rank loads the same step even if a late save is visible to some only.
        choice: list[Any] = [None]
        if self.accelerator.is_main_process:
            latest = checkpoints.latest_complete(root)
            choice = [str(latest) if latest else None]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(choice, from_process=0)
        if choice[0] is None:
            return
        self._load_checkpoint(Path(choice[0]))

    def _checkpoints_in_store(self) -> bool:
        storage = self.spec.output.object_storage
        return self.store is not None and storage is not None and storage.checkpoints

    def _resume_from_store(self) -> None:
        """The newest complete checkpoint in the bucket (rank 0 decides), downloaded by every node, loaded."""
        from accelerate.utils import broadcast_object_list

        assert self.store is not None
        choice: list[Any] = [None]
        if self.accelerator.is_main_process:
            steps = checkpoint_store.remote_complete_steps(self.store)
            choice = [steps[-1] if steps else None]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(choice, from_process=0)
        if choice[0] is None:
            return
        folder = checkpoint_store.fetch_checkpoint(
            self.accelerator, self.store, int(choice[0]), self.settings.checkpoints_dir
        )
        self._load_checkpoint(folder)

    def _load_checkpoint(self, folder: Path) -> None:
        total = self.state.total_steps
        fingerprint = self.state.fingerprint
        self.state = checkpoints.load_checkpoint(
            self.accelerator, folder, fingerprint, self.checkpoint_load_kwargs
        )
        self.state.total_steps = total  # the spec may have changed maxSteps or epochs since
        self.state.fingerprint = fingerprint
        self.resumed_from = self.state.step
        self.last_checkpoint_step = self.state.step
        self.last_metrics = dict(self.state.last_metrics or {})

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Train to the planned step (or an agreed stop). Reports `failed` and re-raises on errors."""
        try:
            self.store = open_store(self.spec.output.object_storage)
            self.tracking = self._plan_tracking()
            self.accelerator = build_accelerator(self.spec, log_with=list(self.tracking.trackers))
            return self._run()
        except BaseException as error:
            if self.tracking is not None:
                with contextlib.suppress(Exception):
                    self.tracking.finish()
            message = f"{type(error).__name__}: {error}"
            self._event(EventKind.FAILED, message=message)
            self.reporter.close(self._summary(EventKind.FAILED, message))
            if isinstance(error, Exception):
                # After the report (an upload may outlast the pod's grace period: the failure must be told
                # first), and not after a second stop signal (SystemExit) or Ctrl-C: those mean "stop now".
                self._upload_tracking_files_best_effort("failed")
            raise

    def _plan_tracking(self) -> Tracking:
        """Rank 0's trackers (TensorBoard next to the outputs; MLflow/W&B as the spec says); a tracker that
        fails is reported as a warning event carrying status.tracking."""
        folder = self.settings.output_dir / TENSORBOARD_FOLDER
        location = self.store.uri(TENSORBOARD_FOLDER) if self.store else str(folder)
        tracking = Tracking(
            self.spec,
            self.settings.job.metadata.name,
            folder,
            location,
            is_main=os.environ.get("RANK", "0") == "0",
            wandb_location=self.store.uri(WANDB_FOLDER) if self.store else None,
        )
        tracking.on_warning = lambda message: self._event(
            EventKind.WARNING, message=message, tracking=tracking.status()
        )
        return tracking

    def _run(self) -> Outcome:
        from accelerate.utils import set_seed

        if self.store is not None and self.accelerator.is_main_process:
            self.store.check_access()  # a wrong endpoint or key fails now, not at the first checkpoint
            self.store_writable = True
        set_seed(self.spec.training.seed)
        # TF32 for the fp32 matmuls that autocast leaves (and for fp32 training) on Ampere or newer.
        torch.backends.cuda.matmul.allow_tf32 = self.spec.training.tf32
        torch.backends.cudnn.allow_tf32 = self.spec.training.tf32
        self._load()
        self._build()
        self._resume()
        assert self.tracking is not None
        self.tracking.start(self.accelerator, self.accelerator.num_processes)
        self.samples_at_start = self.state.samples_seen
        self.step_at_start = self.state.step
        self.loop_started = time.time()
        self._event(
            EventKind.STARTED,
            resumed_from_step=self.resumed_from,
            world_size=self.accelerator.num_processes,
            tracking=self.tracking.status() if self.accelerator.is_main_process else None,
        )
        self.stop.install()
        try:
            preempted = self._train()
        finally:
            self.stop.uninstall()
        if preempted:
            self.tracking.finish()
            self._event(
                EventKind.PREEMPTED,
                message=f"stopped by {self.stop.signal_name} after step {self.state.step}",
            )
            summary = self._summary(
                EventKind.PREEMPTED, f"checkpoint at step {self.state.step}; rerun to resume"
            )
            self.reporter.close(summary)
            # Last: the grace period's seconds go to the checkpoint and the report first; an upload cut short
            # by the kubelet's SIGKILL loses some curves, not the preemption's summary.
            self._upload_tracking_files_best_effort("preempted")
            return Outcome(summary, EXIT_PREEMPTED)
        return self._finish()

    def _train(self) -> bool:
        """The epoch/batch loop. Returns True when stopped early by an agreed stop request.

        Gradient accumulation is done here rather than by accelerate's accumulate(), as transformers.Trainer
        does: each optimizer step's micro-batches are read first, so that a causal LM's loss can be divided by
        the step's target tokens over all micro-batches and ranks (`num_items_in_batch`), which makes a step
        of 2 x 8 sequences the same as one of 16, whatever their lengths. Reading ahead would let accelerate
        see the end of the data early, so synchronisation is set per micro-batch instead.
        """
        accelerator, model, training = self.accelerator, self.model, self.spec.training
        window = _Window()
        self.stop_agreement = StopAgreement(accelerator)
        model.train()
        world = accelerator.num_processes
        deepspeed = self.spec.distribution.deepspeed.enabled
        causal = self.spec.model.task == Task.CAUSAL_LM
        # DeepSpeed would divide each micro-batch's loss by its configured accumulation; we scale ourselves.
        backward_kwargs: dict[str, Any] = {"scale_wrt_gas": False} if deepspeed else {}
        while self.state.step < self.state.total_steps:
            loader = self.train_loader
            if self.state.batches_in_epoch:
                loader = accelerator.skip_first_batches(self.train_loader, self.state.batches_in_epoch)
            # Through the prepared loader: it re-applies its own epoch counter to the sampler on every iter(),
            # and that counter does not know about a resumed run's first (skipped-into) epoch.
            loader.set_epoch(self.state.epoch)
            # And on the sampler itself: with more than one process the skipping loader holds it three wrappers
            # deep (SkipBatchSampler -> BatchSamplerShard -> BatchSampler -> ours), where accelerate's set_epoch
            # does not reach, so a resumed epoch >= 1 would replay epoch 0's order.
            self.sampler.set_epoch(self.state.epoch)
            for micro_batches in optimizer_windows(loader, training.gradient_accumulation_steps):
                step_tokens = None
                if causal:
                    local = torch.stack([target_tokens(batch) for batch in micro_batches]).sum()
                    step_tokens = accelerator.reduce(local, reduction="sum") if world > 1 else local
                for index, batch in enumerate(micro_batches):
                    last = index == len(micro_batches) - 1
                    accelerator.gradient_state._set_sync_gradients(last)
                    # DDP all-reduces only on the step's last micro-batch (DeepSpeed decides by itself).
                    no_sync = not last and not deepspeed
                    with accelerator.no_sync(model) if no_sync else contextlib.nullcontext():
                        if step_tokens is not None:
                            # Summed over this batch's tokens / the step's tokens on all ranks; DDP and DeepSpeed
                            # average the ranks' gradients, so x world size gives the per-token mean.
                            loss = model(**batch, num_items_in_batch=step_tokens).loss
                            accelerator.backward(loss * world, **backward_kwargs)
                            window.loss_sum = window.loss_sum + loss.detach().float() * step_tokens
                            window.loss_weight = window.loss_weight + target_tokens(batch)
                        else:
                            loss = model(**batch).loss
                            accelerator.backward(loss / len(micro_batches), **backward_kwargs)
                            window.loss_sum = window.loss_sum + loss.detach().float()
                            window.loss_weight = window.loss_weight + 1.0
                    window.samples += int(batch["input_ids"].shape[0]) * world
                    self.state.samples_seen += int(batch["input_ids"].shape[0]) * world
                    self.state.batches_in_epoch += 1
                if training.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                if not accelerator.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.state.step += 1
                epoch_done = self.state.batches_in_epoch >= self.plan.batches_per_epoch
                if epoch_done:
                    self.state.epoch += 1
                    self.state.batches_in_epoch = 0
                if self._after_step(window, epoch_done):
                    return True
                if self.state.step >= self.state.total_steps:
                    break
        return False

    def _after_step(self, window: _Window, epoch_done: bool) -> bool:
        """Logging, evaluation and checkpoints after an optimizer step. Returns True to stop (preemption)."""
        spec, state = self.spec, self.state
        training, checkpointing = spec.training, spec.checkpointing
        stop = self.stop_agreement.poll(self.stop.requested)
        last = state.step >= state.total_steps
        if state.step % training.logging_steps == 0 or last or stop:
            self._log_step(window)
        wants_eval = (
            training.eval_strategy == EvalStrategy.STEPS and state.step % (training.eval_steps or 1) == 0
        ) or (training.eval_strategy == EvalStrategy.EPOCH and epoch_done)
        if wants_eval and not stop:
            self._evaluate()
        wants_checkpoint = (
            (checkpointing.every_steps is not None and state.step % checkpointing.every_steps == 0)
            or (checkpointing.at_epoch_end and epoch_done)
            or stop
        )
        if wants_checkpoint and state.step != self.last_checkpoint_step:
            self._checkpoint()
        return stop

    def _log_step(self, window: _Window) -> None:
        device = self.accelerator.device
        mean = torch.stack(
            [
                torch.as_tensor(window.loss_sum, dtype=torch.float32, device=device).reshape(()),
                torch.as_tensor(window.loss_weight, dtype=torch.float32, device=device).reshape(()),
            ]
        )
        mean = self.accelerator.reduce(mean, reduction="sum")
        loss = float(mean[0] / mean[1]) if float(mean[1]) else None
        if loss is not None:
            self.loss_total += loss
            self.loss_count += 1
        elapsed = max(time.time() - window.started, 1e-9)
        run_elapsed = time.time() - self.loop_started
        done = self.state.step - self.step_at_start
        eta = run_elapsed / done * (self.state.total_steps - self.state.step) if done else None
        self._event(
            EventKind.STEP,
            loss=loss,
            learning_rate=float(self.scheduler.get_last_lr()[0]),
            samples_per_second=round(window.samples / elapsed, 3),
            eta_seconds=round(eta, 1) if eta is not None else None,
        )
        window.reset()

    def _evaluate(self) -> None:
        if self.eval_loader is None or self.last_eval_step == self.state.step:
            return
        metrics = evaluate_model(
            self.accelerator,
            self.model,
            self.eval_loader,
            self.spec.model.task,
            self.metrics,
            self.data.num_labels,
        )
        self.last_metrics = {name: round(value, 6) for name, value in metrics.items()}
        self.last_eval_step = self.state.step
        self._event(EventKind.EVAL, metrics=self.last_metrics)

    def _checkpoint(self) -> None:
        self.state.last_metrics = self.last_metrics or None
        started = time.monotonic()
        adapter_only = (
            adapters.trainable_state_only(self.accelerator.unwrap_model(self.model))
            if self.spec.adapter is not None
            else contextlib.nullcontext()
        )
        with adapter_only:
            folder = checkpoints.save_checkpoint(
                self.accelerator,
                self.settings.checkpoints_dir,
                self.state,
                self.spec.checkpointing.keep_last,
                self.checkpoint_save_kwargs,
            )
        location = str(folder)
        if self._checkpoints_in_store():
            assert self.store is not None
            location = checkpoint_store.publish_checkpoint(
                self.accelerator, self.store, folder, self.state, self.spec.checkpointing.keep_last
            )
        # Reported, so that the operator gives deleted workers long enough to write the next one.
        seconds = time.monotonic() - started
        size = checkpoints.folder_bytes(folder) if self.accelerator.is_main_process else None
        self.last_checkpoint_step = self.state.step
        log.info("checkpoint of step %d: %s bytes in %.1f s", self.state.step, size, seconds)
        self._event(
            EventKind.CHECKPOINT,
            checkpoint=location,
            checkpoint_seconds=round(seconds, 3),
            checkpoint_bytes=size,
        )

    # --- the end -----------------------------------------------------------------------------------------

    def _finish(self) -> Outcome:
        accelerator = self.accelerator
        self._evaluate()  # always at the end (a no-op when this step was just evaluated)
        output = self.settings.output_dir
        if self.spec.output.save_model:
            self._save_model()
        if self.settings.debug_weights_hash:
            self._write_weights_hash()
        summary = self._summary(EventKind.FINISHED)
        if accelerator.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
            temporary = output / f".{METRICS_FILE}.tmp"
            temporary.write_text(summary.model_dump_json(indent=2, exclude_none=True), encoding="utf-8")
            os.replace(temporary, output / METRICS_FILE)
        assert self.tracking is not None
        self.tracking.finish()
        if accelerator.is_main_process:
            self._deliver()
        accelerator.wait_for_everyone()
        self._event(EventKind.FINISHED, metrics=self.last_metrics, loss=summary.train_loss)
        self.reporter.close(summary)
        return Outcome(summary, EXIT_OK)

    def _deliver(self) -> None:
        """Rank 0: the model, metrics.json and the TensorBoard files to the object store; the model to the hub."""
        output, spec = self.settings.output_dir, self.spec
        if self.store is not None:
            if spec.output.save_model:
                self.store.remove("model")
                sent = self.store.upload_folder(self.settings.model_dir, "model")
                log.info("model uploaded to %s (%d bytes)", self.store.uri("model"), sent)
            self._upload_tracking_files()
            self.store.write_text(METRICS_FILE, (output / METRICS_FILE).read_text(encoding="utf-8"))
        if spec.output.hub is not None and spec.output.save_model:
            push_model(
                spec.output.hub,
                self.settings.model_dir,
                os.environ,
                f"kubetune: {self.settings.job.metadata.name} at step {self.state.step}",
            )

    def _upload_tracking_files(self) -> None:
        """Rank 0: the trackers' local files (TensorBoard's event files in <output>/tensorboard, W&B's in
        <output>/wandb) to the same folders in the bucket, beside those of earlier attempts (each attempt's files
        have names of their own). Does nothing without a bucket that passed its access check; raises what the
        object store raises."""
        if self.store is None or not self.store_writable or self.tracking is None:
            return
        for local, remote in self.tracking.local_folders():
            sent = self.store.upload_folder(local, remote)
            log.info("tracker files uploaded to %s (%d bytes)", self.store.uri(remote), sent)

    def _upload_tracking_files_best_effort(self, outcome: str) -> None:
        """`_upload_tracking_files` for a run that failed or was preempted: the curves up to the stop are what
        tells why, and the pod's disk goes with the pod. An upload error is logged, never raised: it must not
        replace the run's own error or its exit code."""
        try:
            self._upload_tracking_files()
        except Exception as error:
            log.warning(
                "the tracker files (TensorBoard, W&B) of this %s run were not uploaded to the object store: "
                "%s: %s",
                outcome,
                type(error).__name__,
                error,
            )

    def _save_model(self) -> None:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        # Under ZeRO-3 this gathers the sharded weights (a collective: every rank calls it).
        state_dict = accelerator.get_state_dict(self.model)
        if accelerator.is_main_process:
            folder = self.settings.model_dir
            folder.mkdir(parents=True, exist_ok=True)
            unwrapped = accelerator.unwrap_model(self.model)
            if self.use_cache is not None:
                unwrapped.config.use_cache = self.use_cache
            # A peft model saves its adapter only (adapter_model.safetensors, adapter_config.json).
            unwrapped.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)
            adapter = self.spec.adapter
            if adapter is not None and adapter.merge_at_end:
                token = os.environ.get("HF_TOKEN") or None
                # Rank 0 alone reloads the base: not through ZeRO-3's partitioned init (a collective of all ranks,
                # who wait at the barrier below: it would hang).
                with adapters.without_deepspeed_init(accelerator):
                    adapter_folder = adapters.merge_into_base(
                        folder, self.spec.model, self.location, token, self.use_cache
                    )
                self.tokenizer.save_pretrained(adapter_folder)
            card = render_model_card(
                self.settings.job,
                self._summary(EventKind.FINISHED),
                self.data.source,
                {
                    "train": len(self.data.train),
                    **({"eval": len(self.data.eval)} if self.data.eval is not None else {}),
                },
                self.data.id2label,
            )
            (folder / "README.md").write_text(card, encoding="utf-8")
        accelerator.wait_for_everyone()

    def _write_weights_hash(self) -> None:
        """Debug aid for tests: each rank writes a hash of the model's weights (they must agree under DDP). Under
        ZeRO-3 a rank holds a shard of each weight only, so the weights are gathered first (a collective: every
        rank calls this)."""
        digest = weights_digest(self.accelerator.unwrap_model(self.model))
        folder = self.settings.output_dir / "debug"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"weights-rank-{self.accelerator.process_index}.sha256").write_text(digest + "\n")


def train(
    settings: RunSettings, extra_sinks: Iterable[Sink] = (), stop: StopRequest | None = None
) -> Outcome:
    """Run one process's part of the job described by `settings`. Returns its Outcome; raises on failure."""
    return Trainer(settings, extra_sinks, stop).run()


__all__ = ["EXIT_FAILED", "Outcome", "Plan", "Trainer", "build_accelerator", "resolve_backend", "train"]
