"""The FineTuneJob resource: one pydantic model, the single source of truth.

The CRD's OpenAPI schema, the reference docs, `kubetune validate` and the trainer all read these classes.
This module must import without torch: the operator image does not ship it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kubetune.spec import kube_names
from kubetune.spec.adapters import AdapterSpec
from kubetune.spec.base import SpecModel
from kubetune.spec.kube_names import (
    LABEL_VALUE_MAX,
    LABEL_VALUE_PATTERN,
    ObjectName,
    SecretKey,
)
from kubetune.spec.pod_fields import (
    MAX_TOLERATIONS,
    SHARED_VOLUME_SOURCES,
    Affinity,
    PodVolumeSource,
    Quantity,
    SecretName,
    Toleration,
    VolumeName,
    WholeQuantity,
)

API_GROUP = "kubetune.io"
API_VERSION = "v1alpha1"
KIND: Final = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
# Worker hostnames are "<job>-worker-<index>" (index < 1024) and must be DNS labels (≤ 63 characters);
# the headless Service is named after the job and Service names must start with a letter.
MAX_JOB_NAME_LENGTH = 51
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# The API server makes a name from metadata.generateName by appending 5 characters (letters and digits).
GENERATED_SUFFIX_LENGTH = 5
MAX_GENERATE_NAME_LENGTH = MAX_JOB_NAME_LENGTH - GENERATED_SUFFIX_LENGTH
GENERATE_NAME_PATTERN = r"^[a-z][-a-z0-9]*$"
# Kueue's LocalQueue a job asks for (Kueue's own label; its value becomes the Workload's spec.queueName).
QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"


# --- model ---------------------------------------------------------------------------------------------------


class Task(StrEnum):
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    CAUSAL_LM = "causal-lm"


class ModelSpec(SpecModel):
    name: str = Field(
        min_length=1,
        description=(
            "Hugging Face hub id (e.g. bert-base-uncased), a local/PVC path to a model folder, "
            "or pkg://<python package>/<folder> for a model shipped inside an installed package."
        ),
    )
    revision: str = Field(
        default="main", min_length=1, description="Hub revision (branch, tag or commit) to download."
    )
    task: Task = Field(
        strict=False, default=Task.SEQUENCE_CLASSIFICATION, description="What the model is fine-tuned for."
    )
    num_labels: int | None = Field(
        default=None,
        ge=2,
        le=10000,
        description="Number of classes for sequence classification; inferred from the data when unset.",
    )
    weights_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the weights file (model.safetensors); loading fails on a mismatch.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow model code from the hub repository to run (only for trusted models).",
    )
    # --- trainer fields added for issue 10 (GPU knobs) ---
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        default="auto",
        description=(
            "Attention kernel: auto lets transformers choose (SDPA where the model supports it); "
            "flash_attention_2 needs the flash-attn package and bf16/fp16."
        ),
    )


# --- dataset -------------------------------------------------------------------------------------------------


class DataFormat(StrEnum):
    CSV = "csv"
    JSON = "json"
    JSONL = "jsonl"
    PARQUET = "parquet"


class DataFiles(SpecModel):
    train: str = Field(min_length=1, description="Path or glob of the training file(s).")
    eval: str | None = Field(default=None, description="Path or glob of the evaluation file(s).")
    format: DataFormat | None = Field(
        strict=False,
        default=None,
        description="File format; inferred from the train file's extension when unset.",
    )


class DatasetSpec(SpecModel):
    name: str | None = Field(
        default=None,
        min_length=1,
        description="Hugging Face hub dataset name (e.g. glue); leave unset when using files.",
    )
    config: str | None = Field(default=None, description="Hub dataset configuration (e.g. mrpc).")
    revision: str | None = Field(default=None, description="Hub dataset revision (branch, tag or commit).")
    files: DataFiles | None = Field(default=None, description="Local or PVC files instead of a hub dataset.")
    train_split: str = Field(default="train", min_length=1, description="Split used for training.")
    eval_split: str | None = Field(
        default="validation", description="Split used for evaluation; null disables evaluation."
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"],
        min_length=1,
        max_length=2,
        description="Column(s) holding the text; two columns are encoded as a sentence pair.",
    )
    label_field: str | None = Field(
        default="label",
        min_length=1,
        description="Column holding the class label (sequence classification only).",
    )
    max_length: int = Field(default=128, ge=8, le=131072, description="Tokens per example after truncation.")
    max_train_samples: int | None = Field(
        default=None, ge=1, description="Use at most this many training examples (for quick runs)."
    )
    max_eval_samples: int | None = Field(
        default=None, ge=1, description="Use at most this many evaluation examples."
    )
    group_by_length: bool = Field(
        default=False, description="Batch examples of similar length together to reduce padding."
    )
    tokenization_processes: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Processes that tokenize the data (datasets' num_proc); unset: one.",
    )
    # --- trainer fields added for issue 10 (causal LM data) ---
    packing: bool = Field(
        default=False,
        description=(
            "causal-lm only: concatenate the tokenized texts (each ending in EOS) and cut them into blocks of "
            "maxLength tokens, so no step is spent on padding. Position ids restart at every text and no "
            "attention mask is passed, so transformers' packed-sequence masking keeps attention within each "
            "text (as with its DataCollatorWithFlattening; models whose attention does not use transformers' "
            "masking utilities, e.g. old remote code, would attend across texts). With sdpa that mask is "
            "explicit, slower on GPUs than plain causal attention; flash_attention_2 runs variable-length "
            "kernels instead. The last partial block of every 1000 texts is dropped; a text cut by a block "
            "boundary continues in the next block."
        ),
    )
    # --- trainer fields added for issue 10 (prompt masking) ---
    prompt_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "causal-lm only: column holding the prompt of a prompt/completion pair (set with completionField; "
            "textFields is then not used). Prompt tokens are context, never targets: the loss is on the "
            "completion and the EOS appended after it. A pair longer than maxLength loses the start of its "
            "prompt first, then the end of its completion."
        ),
    )
    completion_field: str | None = Field(
        default=None,
        min_length=1,
        description="causal-lm only: column holding the completion the model learns to write after the prompt.",
    )
    # --- trainer fields added for issue 13 (chat data) ---
    messages_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "causal-lm only: column holding conversations, each a list of {role, content} messages (system, "
            "user, assistant), rendered with the tokenizer's chat template (or dataset.chatTemplate); textFields "
            "is then not used. With assistantOnlyLoss the loss is on the assistant turns only, their end-of-turn "
            "token included. A conversation longer than maxLength loses its end."
        ),
    )
    chat_template: str | None = Field(
        default=None,
        min_length=1,
        max_length=65536,
        description=(
            "With messagesField: the Jinja chat template to render conversations with, instead of the "
            "tokenizer's own; or 'zephyr' for kubetune's built-in one (<|user|>/<|assistant|> turns, each "
            "closed by the tokenizer's EOS, with generation markers), for models whose tokenizer has none. "
            "A tokenizer without a template needs one of these. The template is saved with the model."
        ),
    )
    assistant_only_loss: bool = Field(
        default=True,
        description=(
            "With messagesField: train on the assistant turns only (system and user tokens get no loss). The "
            "template must mark assistant turns with {% generation %} ... {% endgeneration %}; templates of "
            "common models without them (Qwen2.5, Qwen3, Llama 3, Gemma, Phi-3...) are swapped for TRL's "
            "marked training versions. false: every token of the conversation is a target."
        ),
    )

    @model_validator(mode="after")
    def _chat_data(self) -> DatasetSpec:
        if self.messages_field is not None and self.prompt_field is not None:
            raise ValueError(
                f"dataset.messagesField is '{self.messages_field}' and dataset.promptField is "
                f"'{self.prompt_field}': a dataset is either conversations or prompt/completion pairs; unset one"
            )
        if self.chat_template is not None and self.messages_field is None:
            raise ValueError(
                "dataset.chatTemplate is set but dataset.messagesField is unset: the template renders "
                "conversations; set messagesField to the column holding them, or unset chatTemplate"
            )
        return self

    @model_validator(mode="after")
    def _prompt_and_completion(self) -> DatasetSpec:
        if (self.prompt_field is None) != (self.completion_field is None):
            missing = "completionField" if self.completion_field is None else "promptField"
            raise ValueError(
                f"dataset.{missing} is unset but its partner is set: prompt/completion data needs both "
                "dataset.promptField and dataset.completionField (or neither, to train on textFields)"
            )
        return self

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if self.name and self.files:
            raise ValueError(
                "set either dataset.name (a hub dataset) or dataset.files (local files), not both"
            )
        if not self.name and not self.files:
            raise ValueError(
                "set dataset.name (a hub dataset such as glue) or dataset.files.train (a local file)"
            )
        return self


# --- training ------------------------------------------------------------------------------------------------


class MixedPrecision(StrEnum):
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class Scheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


class Metric(StrEnum):
    ACCURACY = "accuracy"
    F1 = "f1"
    PRECISION = "precision"
    RECALL = "recall"
    PERPLEXITY = "perplexity"


CLASSIFICATION_METRICS = frozenset({Metric.ACCURACY, Metric.F1, Metric.PRECISION, Metric.RECALL})
CAUSAL_LM_METRICS = frozenset({Metric.PERPLEXITY})


class EvalStrategy(StrEnum):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class TrainingSpec(SpecModel):
    epochs: float = Field(default=3.0, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps; overrides epochs when set."
    )
    learning_rate: float = Field(default=2e-5, gt=0, le=1, description="Peak learning rate of AdamW.")
    per_device_train_batch_size: int = Field(
        default=16, ge=1, le=65536, description="Training examples per process per micro-batch."
    )
    per_device_eval_batch_size: int = Field(
        default=32, ge=1, le=65536, description="Evaluation examples per process per batch."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Micro-batches accumulated before each optimizer step."
    )
    warmup_steps: int = Field(
        default=0, ge=0, description="Linear warmup steps; wins over warmupRatio when > 0."
    )
    warmup_ratio: float = Field(default=0.0, ge=0, le=1, description="Warmup as a fraction of all steps.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay (not on bias/norm).")
    adam_beta1: float = Field(default=0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(default=0.999, gt=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(default=1e-8, gt=0, le=1e-3, description="AdamW epsilon.")
    lr_scheduler: Scheduler = Field(
        strict=False, default=Scheduler.LINEAR, description="Learning-rate schedule after warmup."
    )
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip gradients to this global norm; null disables clipping."
    )
    mixed_precision: MixedPrecision = Field(
        strict=False,
        default=MixedPrecision.NO,
        description="no, fp16 or bf16 (bf16 needs Ampere GPUs or newer, or CPU).",
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed for data order and initialisation.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass to save memory."
    )
    metrics: list[Annotated[Metric, Strict(False)]] = Field(
        default_factory=lambda: [Metric.ACCURACY],
        min_length=1,
        description="Evaluation metrics; the first is the primary one shown in kubectl get.",
    )
    eval_strategy: EvalStrategy = Field(
        strict=False,
        default=EvalStrategy.EPOCH,
        description="When to evaluate: no, every evalSteps, or each epoch.",
    )
    eval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps (evalStrategy: steps)."
    )
    logging_steps: int = Field(default=10, ge=1, description="Report loss and learning rate every N steps.")
    dataloader_workers: int = Field(
        default=0, ge=0, le=64, description="Data-loading worker processes per rank."
    )
    # --- trainer fields added for issue 10 (GPU knobs) ---
    dataloader_pin_memory: bool = Field(
        default=True, description="Pin data-loader memory for faster host-to-GPU copies (GPU runs only)."
    )
    tf32: bool = Field(
        default=True,
        description="Allow TF32 for fp32 matmuls and convolutions on Ampere or newer GPUs (no effect on CPU).",
    )
    torch_compile: bool = Field(
        default=False,
        description="Compile the model with torch.compile (first steps slower; not with DeepSpeed ZeRO-3).",
    )

    @model_validator(mode="after")
    def _eval_cadence(self) -> TrainingSpec:
        if self.eval_strategy == EvalStrategy.STEPS and self.eval_steps is None:
            raise ValueError(
                "training.evalStrategy is 'steps' but training.evalSteps is unset: set evalSteps: 100"
            )
        return self


# --- distribution --------------------------------------------------------------------------------------------


class OffloadDevice(StrEnum):
    NONE = "none"
    CPU = "cpu"
    NVME = "nvme"


class DeepSpeedSpec(SpecModel):
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=0,
        description="ZeRO stage: 0 disables DeepSpeed (plain DDP), 1-3 shard optimizer/grads/params.",
    )
    offload_optimizer: OffloadDevice = Field(
        strict=False,
        default=OffloadDevice.NONE,
        description="Offload optimizer state to cpu or nvme (ZeRO ≥ 1).",
    )
    offload_parameters: OffloadDevice = Field(
        strict=False,
        default=OffloadDevice.NONE,
        description="Offload parameters to cpu or nvme (ZeRO 3 only).",
    )
    nvme_path: str | None = Field(default=None, description="Folder for nvme offload (required with nvme).")
    config: dict[str, Any] | None = Field(
        default=None,
        description="Raw DeepSpeed JSON merged over the generated config; its keys win.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("zero_stage", mode="before")
    @classmethod
    def _zero_stage_is_a_number(cls, value: Any) -> Any:
        # (true == 1 for a Literal, even strict; the API server refuses a boolean here: so do we)
        if isinstance(value, bool):
            raise ValueError(f"deepspeed.zeroStage is {str(value).lower()}: use a number: 0, 1, 2 or 3")
        return value

    @model_validator(mode="after")
    def _offload_rules(self) -> DeepSpeedSpec:
        if self.offload_optimizer != OffloadDevice.NONE and self.zero_stage == 0:
            raise ValueError(
                f"deepspeed.offloadOptimizer is '{self.offload_optimizer}' but deepspeed.zeroStage is 0 "
                "(DeepSpeed off): set zeroStage to 1, 2 or 3, or offloadOptimizer: none"
            )
        if self.offload_parameters != OffloadDevice.NONE and self.zero_stage != 3:
            raise ValueError(
                f"deepspeed.offloadParameters is '{self.offload_parameters}' but needs zeroStage 3 "
                f"(got {self.zero_stage}): set zeroStage: 3, or offloadParameters: none"
            )
        uses_nvme = OffloadDevice.NVME in (self.offload_optimizer, self.offload_parameters)
        if uses_nvme and not self.nvme_path:
            raise ValueError("nvme offload needs deepspeed.nvmePath: set it to a fast local folder")
        return self

    @property
    def enabled(self) -> bool:
        return self.zero_stage > 0 or bool(self.config)


class DistributionSpec(SpecModel):
    nodes: int = Field(default=1, ge=1, le=1024, description="Worker nodes (one pod each).")
    processes_per_node: int = Field(
        default=1, ge=1, le=64, description="Training processes per node; one GPU each on GPU nodes."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        default="auto", description="torch.distributed backend: auto picks nccl with GPUs, gloo without."
    )
    main_port: int = Field(default=29500, ge=1024, le=65535, description="Rendezvous port on worker 0.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings.")
    # --- trainer fields added for issue 10 ---
    rendezvous_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=86400,
        description=(
            "How long nodes wait for each other to join and for every collective (torch's default 600 s is "
            "short when one node still pulls a large image)."
        ),
    )

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


# --- checkpoints and output ----------------------------------------------------------------------------------


class CheckpointSpec(SpecModel):
    every_steps: int | None = Field(
        default=None, ge=1, description="Save a checkpoint every N optimizer steps (and at each epoch end)."
    )
    at_epoch_end: bool = Field(default=True, description="Save a checkpoint at the end of each epoch.")
    keep_last: int = Field(default=2, ge=1, le=1000, description="How many recent checkpoints to keep.")
    resume: bool = Field(default=True, description="Resume from the newest complete checkpoint on start.")


class OutputSpec(SpecModel):
    path: str = Field(
        default="/output",
        min_length=1,
        max_length=1024,  # bounded, so that the CRD's rule comparing it with mount paths has a bounded cost
        description="Folder for checkpoints, the saved model and reports.",
    )
    save_model: bool = Field(default=True, description="Save the fine-tuned model and tokenizer at the end.")
    # --- trainer field added for issue 10 (multi-node output) ---
    ephemeral: bool = Field(
        default=False,
        description=(
            "Accept that output.path is each worker's own emptyDir on a job of several nodes: every node then "
            "keeps its own part of each checkpoint, nothing can resume after a restart, and the model is lost "
            "with the pods. Without it such a job is refused: put output.path on a shared volume instead "
            "(kubernetes.outputVolume.claimName, a ReadWriteMany claim, or a podOverlay volume mounted there)."
        ),
    )
    # --- issue 13: the model delivered to object storage and the hub (kubetune.spec.storage) ---
    object_storage: ObjectStorageSpec | None = Field(
        default=None,
        description="Also write the model, the reports and (by default) the checkpoints to S3-compatible "
        "object storage; a job with it needs no shared volume and no ephemeral flag.",
    )
    hub: HubPushSpec | None = Field(
        default=None, description="Push the final model to a Hugging Face hub repository at the end."
    )


# --- Kubernetes placement (read by the operator only) --------------------------------------------------------


# What spec.kubernetes copies onto the worker pods is bounded so that every pod the API server would refuse is
# refused at `kubectl apply` instead (the CRD's CEL rules on map keys need bounded maps to fit their cost).
MAX_POD_LABELS = 64
MAX_POD_ENV = 512
# 30 x (a 317-character key + 8192 characters) stays under the API server's 256 KiB for all of a pod's
# annotations, with room for kubetune's own.
MAX_POD_ANNOTATIONS = 30
MAX_POD_ANNOTATION_VALUE = 8192
MAX_PULL_SECRETS = 16
# Label and annotation keys the operator sets on a job's children (they identify its pods and Workload): a
# job's own spec.kubernetes.labels/annotations may not use them, nor anything in these domains.
RESERVED_KEY_PREFIXES = (f"{API_GROUP}/", "kueue.x-k8s.io/")
RESERVED_LABEL_KEYS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
)

LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE_PATTERN)]
AnnotationValue = Annotated[str, StringConstraints(max_length=MAX_POD_ANNOTATION_VALUE)]


class VolumeSource(SpecModel):
    claim_name: str | None = Field(
        default=None, description="Name of a PersistentVolumeClaim to mount; unset uses an emptyDir."
    )
    mount_path: str = Field(
        min_length=1, max_length=1024, description="Where the volume is mounted in the worker container."
    )
    size_limit: Quantity | None = Field(
        default=None, description="emptyDir size limit, a quantity, e.g. 20Gi (no claim only)."
    )


class SecretKeyRef(SpecModel):
    name: ObjectName = Field(description="Secret name in the job's namespace (a DNS subdomain).")
    key: SecretKey = Field(
        default="token",
        description="Key in the Secret holding the value (letters, digits, '-', '_' and '.'; not '.' nor "
        "'..'-prefixed).",
    )


class ResourceSpec(SpecModel):
    cpu: Quantity | None = Field(
        default=None, description="CPU request (and limit) per worker, a quantity, e.g. '8' or 7500m."
    )
    memory: Quantity | None = Field(
        default=None, description="Memory request (and limit) per worker, a quantity, e.g. 64Gi."
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        min_length=1,
        max_length=kube_names.QUALIFIED_KEY_MAX,
        description="Extended resource requested per process (a device plugin's domain/name).",
    )
    gpus_per_node: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs per worker; defaults to processesPerNode (0 for CPU runs).",
    )
    shm_size: Quantity = Field(
        default="8Gi", description="Size of the /dev/shm memory volume for data loaders/NCCL, a quantity."
    )

    @field_validator("gpu_resource_name", mode="after")
    @classmethod
    def _extended_resource(cls, name: str) -> str:
        problem = kube_names.extended_resource_name_problem(name)
        if problem:
            raise ValueError(f"'{name[:80]}' {problem}")
        return name


# --- operator: the pod overlay (issue 11) ---
# Names kubetune gives its own volumes and paths: an overlay may not reuse them.
RESERVED_VOLUME_NAMES = ("kubetune-config", "dshm", "output", "hf-cache", "tmp")
RESERVED_MOUNT_PATHS = ("/etc/kubetune", "/dev/shm", "/tmp")


class ExtraVolume(SpecModel):
    name: VolumeName = Field(
        description="Volume name: a DNS label (lowercase letters, digits and '-'), not one of kubetune's own.",
    )
    source: PodVolumeSource = Field(
        description="The core/v1 volume source, exactly one kind, e.g. {hostPath: {path: /dev/infiniband}}, "
        "{nfs: {server: ..., path: ...}} or {csi: {...}}, as it would appear in a pod's volume next to its "
        "name. hostPath is accepted (clusters that forbid it refuse the pods, which the job's status reports)."
    )


class ExtraVolumeMount(SpecModel):
    name: str = Field(min_length=1, max_length=63, description="A volume of podOverlay.volumes.")
    mount_path: str = Field(
        min_length=1, max_length=256, description="Where it is mounted in the trainer container."
    )
    read_only: bool = Field(default=False, description="Mount read-only.")
    sub_path: str | None = Field(default=None, description="Mount only this path of the volume.")


class PodOverlay(SpecModel):
    extra_resources: dict[str, WholeQuantity] = Field(
        default_factory=dict,
        max_length=8,
        description="Extended resources per worker as requests = limits, e.g. "
        "{'rdma/hca_shared_devices_a': '1'} for InfiniBand/RoCE (names: a device plugin's domain/name; counts: "
        "whole numbers).",
    )
    volumes: list[ExtraVolume] = Field(
        default_factory=list, max_length=16, description="Extra volumes for every worker."
    )
    volume_mounts: list[ExtraVolumeMount] = Field(
        default_factory=list,
        max_length=16,
        description="Where the extra volumes are mounted in the trainer container.",
    )
    add_capabilities: list[Literal["IPC_LOCK", "SYS_RESOURCE", "SYS_NICE", "NET_RAW", "NET_ADMIN"]] = Field(
        default_factory=list,
        description="Linux capabilities added to the trainer (IPC_LOCK for RDMA memory registration); "
        "a namespace enforcing the 'restricted' Pod Security level refuses them.",
    )

    @model_validator(mode="after")
    def _overlay_rules(self) -> PodOverlay:
        names = [v.name for v in self.volumes]
        reserved = sorted(set(names) & set(RESERVED_VOLUME_NAMES))
        if reserved:
            raise ValueError(
                f"kubernetes.podOverlay.volumes: {reserved} are kubetune's own volume names: pick others"
            )
        unknown = sorted({m.name for m in self.volume_mounts} - set(names))
        if unknown:
            raise ValueError(
                f"kubernetes.podOverlay.volumeMounts name {unknown}, which are not in podOverlay.volumes: "
                "add the volumes or fix the names"
            )
        taken = sorted({m.mount_path for m in self.volume_mounts} & set(RESERVED_MOUNT_PATHS))
        if taken:
            raise ValueError(f"kubernetes.podOverlay.volumeMounts: {taken} are kubetune's own mount paths")
        plain = sorted(k for k in self.extra_resources if "/" not in k)
        if plain:
            raise ValueError(
                f"kubernetes.podOverlay.extraResources {plain} are not extended resources (domain/name): set "
                "cpu and memory in kubernetes.resources"
            )
        problems = [
            f"{name[:80]!r} {problem}"
            for name in self.extra_resources
            if "/" in name and (problem := kube_names.extended_resource_name_problem(name))
        ]
        if problems:
            raise ValueError("kubernetes.podOverlay.extraResources: " + "; ".join(problems))
        return self


class CoschedulingPolicy(SpecModel):
    schedule_timeout_seconds: int = Field(
        default=60,
        ge=1,
        le=86400,
        description="How long the coscheduling plugin holds the workers it has placed while it waits for the "
        "rest of the gang (the PodGroup's scheduleTimeoutSeconds); then it releases them all and tries again "
        "later. As Kubeflow Trainer's default: 60.",
    )


class PodGroupPolicy(SpecModel):
    coscheduling: CoschedulingPolicy | None = Field(
        default=None,
        description="Gang scheduling by the coscheduling plugin of kubernetes-sigs/scheduler-plugins: the "
        "operator creates a PodGroup (scheduling.x-k8s.io/v1alpha1) named after the job with minMember = "
        "distribution.nodes and the gang's total requests as minResources, and labels every worker "
        "scheduling.x-k8s.io/pod-group. The scheduler that runs the plugin places all the workers or none. "
        "Needs that scheduler, its PodGroup CRD and the operator's coscheduling integration (Helm value "
        "coscheduling.enabled); set schedulerName when it runs as a second scheduler.",
    )

    @model_validator(mode="after")
    def _names_a_scheduler(self) -> PodGroupPolicy:
        if self.coscheduling is None:
            raise ValueError(
                "kubernetes.podGroupPolicy names no gang scheduler: set podGroupPolicy.coscheduling "
                "({} for its defaults) or remove podGroupPolicy"
            )
        return self


class KubernetesSpec(SpecModel):
    image: str | None = Field(default=None, description="Trainer image; the operator's default when unset.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy for the worker containers."
    )
    image_pull_secrets: list[SecretName] = Field(
        default_factory=list,
        max_length=MAX_PULL_SECRETS,
        description="Secrets used to pull the image (Secret names: DNS subdomains).",
    )
    resources: ResourceSpec = Field(default_factory=ResourceSpec, description="Per-worker resources.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_POD_LABELS,
        description="Node labels the workers require (label keys and values).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=MAX_TOLERATIONS, description="Taints the workers tolerate."
    )
    affinity: Affinity | None = Field(
        default=None,
        description="Node affinity, pod affinity and anti-affinity (core/v1 Affinity) copied to every worker.",
    )
    priority_class_name: ObjectName | None = Field(default=None, description="PriorityClass of the workers.")
    scheduler_name: ObjectName | None = Field(
        default=None,
        description="Scheduler for the workers (schedulerName), e.g. scheduler-plugins-scheduler for "
        "scheduler-plugins installed as a second scheduler. The scheduler alone gives no gang: with "
        "podGroupPolicy the operator also creates the PodGroup the coscheduling plugin reads. kubetune makes no "
        "Volcano PodGroup, so Volcano does not place the workers as a gang (see docs/deploy.md).",
    )
    pod_group_policy: PodGroupPolicy | None = Field(
        default=None,
        description="Gang scheduling without Kueue: the PodGroup a gang scheduler needs to place all the "
        "workers of an attempt or none (as Kubeflow Trainer's podGroupPolicy).",
    )
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount the workers run as; a per-job one is created when unset."
    )
    hf_token_secret: SecretKeyRef | None = Field(
        default=None, description="Secret key with the Hugging Face token, exposed as HF_TOKEN."
    )
    output_volume: VolumeSource | None = Field(
        default=None,
        description="Volume holding output.path (use a PVC to keep checkpoints across restarts).",
    )
    cache_volume: VolumeSource | None = Field(
        default=None, description="Volume for the Hugging Face cache (HF_HOME)."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_POD_ENV,
        description="Extra environment variables for workers (names: printable ASCII but '='); kubetune's own "
        "(KUBETUNE_*, HF_HOME, ...) win over them.",
    )
    # --- operator: secrets and the pod overlay (issue 11) ---
    secret_env: dict[str, SecretKeyRef] = Field(
        default_factory=dict,
        max_length=MAX_POD_ENV,
        description="Environment variables read from Secret keys (valueFrom): the values never appear in the "
        "job, the pod spec or the ConfigMap, e.g. {WANDB_API_KEY: {name: wandb, key: api-key}}.",
    )
    env_from_secrets: list[ObjectName] = Field(
        default_factory=list, description="Secrets whose every key becomes an environment variable (envFrom)."
    )
    pod_overlay: PodOverlay = Field(
        default_factory=PodOverlay,
        description="What real GPU clusters need beyond the basics: extra device resources, volumes and "
        "capabilities (network-attachment annotations go in annotations).",
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_POD_LABELS,
        description="Extra labels on the worker pods (label keys and values; not kubetune's own keys, nor keys "
        f"in the {' or '.join(RESERVED_KEY_PREFIXES)} domains).",
    )
    annotations: dict[str, AnnotationValue] = Field(
        default_factory=dict,
        max_length=MAX_POD_ANNOTATIONS,
        description=f"Extra annotations on worker pods (at most {MAX_POD_ANNOTATIONS}, values of at most "
        f"{MAX_POD_ANNOTATION_VALUE} characters; not in the {' or '.join(RESERVED_KEY_PREFIXES)} domains).",
    )
    # --- trainer field added for issue 10 (the operator writes it into the pods) ---
    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=30,
        le=86400,
        description=(
            "Seconds a worker has after SIGTERM to write its checkpoint (the pods' "
            "terminationGracePeriodSeconds); unset: 120. When the operator deletes workers itself (suspend, "
            "gang restart) it gives them the longer of this and 3 x the last checkpoint's measured save time "
            "(status.lastCheckpoint.saveSeconds). Raise it for large ZeRO-3 checkpoints: evictions, node "
            "drains and a job's first save get this value only."
        ),
    )

    @field_validator("labels", "node_selector", mode="after")
    @classmethod
    def _label_keys(cls, labels: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        problems = [
            f"key {key[:80]!r} {problem}"
            for key in labels
            if (problem := kube_names.qualified_name_problem(key))
        ]
        if info.field_name == "labels":  # (a node selector matches the nodes' labels: any key)
            problems += [f"key {key!r} {problem}" for key in labels if (problem := reserved_key_problem(key))]
        if problems:
            raise ValueError("; ".join(problems))
        return labels

    @field_validator("annotations", mode="after")
    @classmethod
    def _annotation_keys(cls, annotations: dict[str, str]) -> dict[str, str]:
        # ASCII only: the CRD's rule lowercases ASCII only, as its twin must (Kubernetes would lowercase 'K').
        problems = [
            f"key {key[:80]!r} {problem}"
            for key in annotations
            if (
                problem := kube_names.annotation_key_problem(key, ascii_only=True)
                or reserved_key_problem(key, annotation=True)
            )
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return annotations

    @field_validator("env", "secret_env", mode="after")
    @classmethod
    def _env_names(cls, env: dict[str, Any]) -> dict[str, Any]:
        problems = [
            f"{name[:80]!r} {problem}" for name in env if (problem := kube_names.env_name_problem(name))
        ]
        if problems:
            raise ValueError("variable names " + "; ".join(problems))
        return env

    @model_validator(mode="after")
    def _gang_scheduler(self) -> KubernetesSpec:
        coscheduling = self.pod_group_policy is not None and self.pod_group_policy.coscheduling is not None
        if coscheduling and (self.scheduler_name or "").strip().lower() == "volcano":
            raise ValueError(
                "kubernetes.podGroupPolicy.coscheduling makes a scheduling.x-k8s.io PodGroup, which Volcano "
                "does not read (it wants its own scheduling.volcano.sh PodGroup, which kubetune does not "
                "make): use a scheduler running the coscheduling plugin in kubernetes.schedulerName, or "
                "remove podGroupPolicy"
            )
        return self


def reserved_key_problem(key: str, *, annotation: bool = False) -> str | None:
    """Why a label or annotation key of spec.kubernetes is kubetune's (or Kueue's) own, or None.

    A label key is compared as written: label keys are case-sensitive (app.kubernetes.io/Name is not
    app.kubernetes.io/name), as the CRD's rule compares them. An `annotation` key is compared lowercased, as the
    API server validates annotation keys and as the CRD's rule (lowerAscii) does.
    """
    compared = key.lower() if annotation else key
    if compared in RESERVED_LABEL_KEYS or compared.startswith(RESERVED_KEY_PREFIXES):
        return (
            "is kubetune's own or Kueue's (the operator sets it on the workers: they identify the job's pods, and "
            "Kueue would take the pods for its own): pick another key; a job's queue goes in the FineTuneJob's "
            f"metadata.labels[{QUEUE_LABEL}]"
        )
    return None


class RunPolicy(SpecModel):
    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Gang restarts allowed after failures before the job fails."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has run longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished job (and its children) after this many seconds."
    )
    scheduling_timeout_seconds: int = Field(
        default=600,
        ge=1,
        description="Fail when workers stay unschedulable, cannot pull the image or stay in "
        "ContainerCreating (a volume that cannot attach, a missing ConfigMap) this long.",
    )
    # --- operator: disruptions (issue 11) ---
    disruption_limit: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Gang restarts allowed after disruptions (preemption, eviction through the API, node "
        "loss, a deleted worker) before the job fails; they do not count against backoffLimit. Evictions "
        "by the kubelet for node memory/disk pressure count as failures.",
    )
    node_loss_timeout_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="How long a worker stays bound to a node that stopped reporting (NotReady or unreachable) "
        "before Kubernetes evicts it and the gang restarts from its last checkpoint elsewhere: the "
        "tolerationSeconds of the workers' NoExecute tolerations of node.kubernetes.io/not-ready and "
        "/unreachable (Kubernetes' default is 300; peers of a silent node can hang in a collective that "
        "long). A toleration of either key in spec.kubernetes.tolerations takes precedence.",
    )
    suspend: bool = Field(
        default=False,
        description="Deprecated: use spec.suspend (still honoured: the job is suspended when either is true).",
    )
    report_progress: bool = Field(
        default=True,
        description="Let rank 0 patch live progress into the status (per-job least-privilege role).",
    )


# Issue 13's blocks live in modules of their own; they build on SpecModel and SecretKeyRef above.
from kubetune.spec.storage import HubPushSpec, ObjectStorageSpec  # noqa: E402
from kubetune.spec.tracking import TrackingSpec  # noqa: E402

OutputSpec.model_rebuild()

# --- the resource --------------------------------------------------------------------------------------------


class FineTuneJobSpec(SpecModel):
    model: ModelSpec = Field(description="The model to fine-tune.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation hyperparameters.")
    distribution: DistributionSpec = Field(
        default_factory=DistributionSpec, description="Nodes, processes and DeepSpeed."
    )
    checkpointing: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoint cadence.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results go.")
    # --- trainer field added for issue 13 (adapters) ---
    adapter: AdapterSpec | None = Field(
        default=None,
        description=(
            "causal-lm only: train a LoRA adapter (peft) and keep the base model frozen; unset: every weight "
            "trains. Checkpoints hold the adapter's weights and optimizer state only."
        ),
    )
    kubernetes: KubernetesSpec = Field(
        default_factory=KubernetesSpec, description="Pod placement and volumes (operator only)."
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Restarts, deadlines and suspension."
    )
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec,
        description="Experiment tracking: TensorBoard files always, MLflow and W&B when configured.",
    )
    suspend: bool = Field(
        default=False,
        description="Remove the workers (SIGTERM: they checkpoint) but keep the job; false resumes it from its "
        "checkpoint. As on Job, JobSet and TrainJob.",
    )

    @model_validator(mode="after")
    def _task_rules(self) -> FineTuneJobSpec:
        task = self.model.task
        metrics = {Metric(m) for m in self.training.metrics}
        if task == Task.SEQUENCE_CLASSIFICATION:
            if not self.dataset.label_field:
                raise ValueError(
                    "model.task is sequence-classification but dataset.labelField is unset: "
                    "name the column that holds the class, e.g. labelField: label"
                )
            wrong = sorted(metrics - CLASSIFICATION_METRICS)
            allowed = ", ".join(sorted(CLASSIFICATION_METRICS))
        else:
            wrong = sorted(metrics - CAUSAL_LM_METRICS)
            allowed = ", ".join(sorted(CAUSAL_LM_METRICS))
        if self.dataset.packing and task != Task.CAUSAL_LM:
            raise ValueError(
                f"dataset.packing is true but model.task is {task}: packing applies to causal-lm only; "
                "set packing: false"
            )
        if self.dataset.prompt_field is not None and task != Task.CAUSAL_LM:
            raise ValueError(
                f"dataset.promptField is '{self.dataset.prompt_field}' but model.task is {task}: "
                "prompt/completion pairs apply to causal-lm only; unset promptField and completionField"
            )
        if self.dataset.messages_field is not None and task != Task.CAUSAL_LM:
            raise ValueError(
                f"dataset.messagesField is '{self.dataset.messages_field}' but model.task is {task}: "
                "conversations apply to causal-lm only; unset messagesField"
            )
        if self.adapter is not None and task != Task.CAUSAL_LM:
            raise ValueError(
                f"adapter is set but model.task is {task}: LoRA adapters are supported for causal-lm only; "
                "set model.task: causal-lm or remove spec.adapter"
            )
        if (
            self.adapter is not None
            and self.adapter.qlora is not None
            and self.distribution.deepspeed.zero_stage == 3
        ):
            raise ValueError(
                "adapter.qlora is set with distribution.deepspeed.zeroStage 3: a 4-bit base cannot be "
                "partitioned by ZeRO-3 here; use zeroStage 0 (DDP) or 2"
            )
        if wrong:
            raise ValueError(f"training.metrics {wrong} do not apply to task {task}: use {allowed}")
        return self

    @property
    def suspended(self) -> bool:
        """spec.suspend, or the older spec.runPolicy.suspend (kept working, not dropped)."""
        return self.suspend or self.run_policy.suspend

    @property
    def primary_metric(self) -> str:
        return str(self.training.metrics[0])


def covers(mount_path: str, path: str) -> bool:
    """True when `path` is `mount_path` or lies under it."""
    return path == mount_path or path.startswith(mount_path if mount_path.endswith("/") else mount_path + "/")


def unshared_output_problem(spec: FineTuneJobSpec) -> str | None:
    """Why the job's output would land on each node's own ephemeral disk (a job of several nodes whose
    output.path is on no shared volume, and output.ephemeral is not set), or None when it does not.

    A cluster rule only: `kubetune run` starts every node on one machine, where all share one folder.
    """
    if spec.distribution.nodes <= 1 or spec.output.ephemeral:
        return None
    storage = spec.output.object_storage
    if storage is not None and storage.checkpoints:
        return None  # the checkpoints and the model go to the bucket, which every node reaches
    path = spec.output.path
    kube = spec.kubernetes
    if (
        kube.output_volume is not None
        and kube.output_volume.claim_name
        and covers(kube.output_volume.mount_path, path)
    ):
        return None
    shared = {v.name for v in kube.pod_overlay.volumes if set(v.source.kinds()) & set(SHARED_VOLUME_SOURCES)}
    if any(m.name in shared and covers(m.mount_path, path) for m in kube.pod_overlay.volume_mounts):
        return None
    return (
        f"output.path '{path}' is on no shared volume, and this job has {spec.distribution.nodes} nodes: each "
        "would keep its own part of every checkpoint on its pod's emptyDir (lost with the pod, so nothing "
        "resumes), and the model would be lost too. Set kubernetes.outputVolume: {claimName: <a ReadWriteMany "
        f"claim>, mountPath: {path}}}, or mount a shared volume (nfs, csi, a claim) at {path} with "
        "kubernetes.podOverlay, or write to object storage (output.objectStorage: {uri: s3://<bucket>/<prefix>}), "
        "or set output.ephemeral: true to accept it"
    )


class ObjectMeta(BaseModel):
    """The parts of metadata kubetune reads; everything else a user writes is kept and ignored."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        default="finetune",
        min_length=1,
        max_length=MAX_JOB_NAME_LENGTH,
        pattern=JOB_NAME_PATTERN,
        description=f"Job name: a DNS label (lowercase letters, digits and '-') that starts with a letter, at "
        f"most {MAX_JOB_NAME_LENGTH} characters (it names the Service and the worker hostnames).",
    )
    namespace: str | None = Field(default=None, description="Namespace of the job.")
    generate_name: str | None = Field(
        default=None,
        alias="generateName",
        exclude_if=lambda value: value is None,
        description=f"Instead of a name: its start, to which the API server appends {GENERATED_SUFFIX_LENGTH} "
        f"characters (so at most {MAX_GENERATE_NAME_LENGTH} characters, starting with a letter).",
    )
    labels: dict[str, str] | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description=f"Labels of the job (not copied to its pods: see spec.kubernetes.labels). {QUEUE_LABEL} "
        "names the Kueue LocalQueue the job waits in (a DNS subdomain).",
    )
    annotations: dict[str, str] | None = Field(
        default=None, exclude_if=lambda value: value is None, description="Annotations of the job."
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        """`name: null` (or "") is no name, as on the API server, which then makes one from generateName."""
        if not isinstance(data, dict):
            return data
        unset = {
            k
            for k, v in data.items()
            if (v is None and k in _OBJECT_META_KEYS) or (v == "" and k in _NAME_KEYS)
        }
        return {k: v for k, v in data.items() if k not in unset} if unset else data

    @model_validator(mode="after")
    def _generate_name(self) -> ObjectMeta:
        value = self.generate_name
        if not value:
            return self
        if "name" in self.model_fields_set:
            # Ignored, but the API server still checks it: a DNS subdomain once a trailing '-' is masked, the way
            # apimachinery's maskTrailingDash masks it (its last two characters become one 'a'; a lone '-' stays).
            masked = value[:-2] + "a" if len(value) > 1 and value.endswith("-") else value
            problem = kube_names.dns_subdomain_problem(masked)
            if problem:
                raise ValueError(
                    f"metadata.generateName '{value[:80]}' {problem}; or remove it (name is set)"
                )
        elif len(value) > MAX_GENERATE_NAME_LENGTH or not re.fullmatch(GENERATE_NAME_PATTERN, value):
            raise ValueError(
                f"metadata.generateName '{value[:80]}' must start with a lowercase letter, hold only lowercase "
                f"letters, digits and '-', and be at most {MAX_GENERATE_NAME_LENGTH} characters (the API server "
                f"appends {GENERATED_SUFFIX_LENGTH}, and a job's name may have {MAX_JOB_NAME_LENGTH})"
            )
        return self

    @field_validator("labels", mode="after")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        problems = kube_names.label_problems(labels or {})
        queue = (labels or {}).get(QUEUE_LABEL)
        if queue is not None and not problems:
            problem = queue_label_problem(queue)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError("; ".join(problems))
        return labels

    @field_validator("annotations", mode="after")
    @classmethod
    def _annotations(cls, annotations: dict[str, str] | None) -> dict[str, str] | None:
        problems = kube_names.annotation_problems(annotations or {})
        if problems:
            raise ValueError("; ".join(problems))
        return annotations


_NAME_KEYS = ("name", "generateName", "generate_name")
_OBJECT_META_KEYS = (*_NAME_KEYS, "namespace", "labels", "annotations")


def queue_label_problem(queue: str) -> str | None:
    """Why the value of a job's queue label cannot name a Kueue LocalQueue (the Workload's spec.queueName, a DNS
    subdomain, which Kueue's schema checks; the API server cannot check the label of a FineTuneJob for it), or
    None. An empty value means no queue."""
    problem = kube_names.dns_subdomain_problem(queue) if queue.strip() else None
    if problem:
        return (
            f"metadata.labels[{QUEUE_LABEL}] is '{queue}': a Kueue LocalQueue name {problem}; use the name of "
            "the LocalQueue, e.g. team-a"
        )
    return None


class FineTuneJob(BaseModel):
    """A whole FineTuneJob document as `kubectl apply -f` takes it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Annotated[str, Field(alias="apiVersion")] = f"{API_GROUP}/{API_VERSION}"
    kind: Literal["FineTuneJob"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _api_version(self) -> FineTuneJob:
        expected = f"{API_GROUP}/{API_VERSION}"
        if self.api_version != expected:
            raise ValueError(f"apiVersion is '{self.api_version}': use apiVersion: {expected}")
        return self
