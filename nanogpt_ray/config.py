"""Typed configs with nanoGPT's names and defaults, and the loader that fills them.

Stdlib only: the driver, Ray workers and tests import this without torch.

A config is built in three layers, each overriding the one before:
  1. the dataclass defaults below (nanoGPT's train.py / sample.py / bench.py values),
  2. config files, run with runpy exactly like nanoGPT's `exec(open(file).read())` did,
  3. `--key=value` flags, parsed with ast.literal_eval (never executed) and coerced to the field type.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import runpy
import traceback
import types
import typing
from dataclasses import dataclass, field

GPT2_SHAPES: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}
"""OpenAI's four GPT-2 models: the one table of their shapes."""
GPT2_PRESETS = tuple(GPT2_SHAPES)
GPT2_VOCAB_SIZE = 50257
PADDED_VOCAB_SIZE = 50304
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
"""GPT-2's 50257 tokens padded up to a multiple of 64 (nanoGPT's choice: faster matmuls); the extra rows are
never targets, so the model learns to give them no probability."""

Dtype = typing.Literal["auto", "float32", "bfloat16", "float16"]
Backend = typing.Literal["auto", "nccl", "gloo"]
Parallelism = typing.Literal["ddp", "fsdp"]
PlacementStrategy = typing.Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
Arch = typing.Literal["gpt2", "modern"]
Gelu = typing.Literal["exact", "tanh"]
DataOrder = typing.Literal["nanogpt", "worker_invariant"]
DTYPES = typing.get_args(Dtype)
BACKENDS = typing.get_args(Backend)


class UserError(ValueError):
    """Bad input a person has to fix (a config value, a dataset, a checkpoint, a prompt). Every module's own
    error class derives from it, and the CLI prints it as one line with exit code 2, never a traceback."""


class ConfigError(UserError):
    """A config value a person has to fix; the message is one line and names the key."""


class MissingExtraError(UserError):
    """An optional dependency that is not installed; the message names the extra that brings it."""


OPTIONAL_EXTRAS = {"transformers": "hf", "huggingface_hub": "hf", "safetensors": "hf", "datasets": "hf",
                   "wandb": "wandb", "matplotlib": "plots", "tensorboard": "plots", "pandas": "plots"}
"""Top-level module -> the pyproject extra that installs it (what `pip install nanogpt-ray[extra]` brings)."""


def missing_extra(error: ImportError, purpose: str) -> MissingExtraError | None:
    """The one-line error for an optional module that failed to import, or None when the module is not one of
    ours to name (then the ImportError is a real bug and keeps its traceback)."""
    module = (getattr(error, "name", None) or "").split(".")[0]
    if module not in OPTIONAL_EXTRAS:
        return None
    return MissingExtraError(f"{purpose} needs {module!r}, which is not installed; "
                             f"pip install 'nanogpt-ray[{OPTIONAL_EXTRAS[module]}]'")


def _is_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()


def _check_device(device: str) -> None:
    if not _is_device(device):
        raise ConfigError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _check_choices(config) -> None:
    """Literal-typed fields hold one of their choices, however the config was built (flags, files, a dict)."""
    for f in dataclasses.fields(config):
        if _is_literal(type(config), f.name):
            coerce(type(config), f.name, getattr(config, f.name))


def _is_literal(cls, name: str) -> bool:
    return typing.get_origin(_field_type(cls, name)) is typing.Literal


# ----------------------------------------------------------------------------- what a model is

OURS = {"ours": True}
"""Field metadata of a model option nanoGPT does not have: checkpoints keep it out of nanoGPT's `model_args`."""


@dataclass
class ModelOptions:
    """What a model is, as a person sets it: the one list of model options. TrainConfig and BenchConfig inherit
    it, GPTConfig adds the vocabulary, and checkpoints store it; adding an option is one field here, its use
    in the model, and tests."""

    n_layer: int = 12
    """Transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 768
    """Width of the residual stream (embedding size)."""
    block_size: int = 1024
    """Context length in tokens (the model's positions and each training sequence)."""
    dropout: float = 0.0
    """0 for pretraining, 0.1+ for finetuning."""
    bias: bool = False
    """Bias in Linear and LayerNorm layers, as GPT-2 (without is a bit better and faster)."""
    gelu: Gelu = field(default="exact", metadata=OURS)
    """MLP activation: 'exact' GELU as nanoGPT, or 'tanh' as OpenAI GPT-2 (recorded in the checkpoint)."""
    arch: Arch = field(default="gpt2", metadata=OURS)
    """Model flavour: 'gpt2' is nanoGPT's model exactly; 'modern' trains faster (rotary positions, QK-norm,
    ReLU², RMSNorm, no biases, untied zero-init head, logit soft-cap). Recorded in the checkpoint."""

    def __post_init__(self) -> None:
        _check_choices(self)
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be a positive integer")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                              "(each head gets n_embd // n_head dims)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if self.arch == "modern" and self.bias:
            raise ConfigError("bias=True does not go with arch='modern' (the modern recipe has no biases); set bias=False")
        if self.arch == "modern" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"arch='modern' needs an even head size for its rotary positions; "
                              f"n_embd // n_head = {self.n_embd // self.n_head}")

    def model_args(self) -> dict:
        """The model options of this config (what GPTConfig takes besides vocab_size)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelOptions)}


@dataclass
class GPTConfig(ModelOptions):
    """The model's config: the model options plus the vocabulary (which comes from the data or the weights)."""

    vocab_size: int = PADDED_VOCAB_SIZE
    """Rows of the embedding and the head; a BPE vocabulary is padded to a multiple of 64."""
    bias: bool | None = None
    """None: the flavour's own, True for 'gpt2' (nanoGPT's GPTConfig default) and False for 'modern'."""

    def __post_init__(self) -> None:
        if self.bias is None:
            self.bias = self.arch != "modern"
        super().__post_init__()

    def nanogpt_args(self) -> dict:
        """checkpoint['model_args']: exactly the keys nanoGPT's GPTConfig takes (its sample.py and train.py
        build the model with GPTConfig(**model_args))."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("ours")}

    def our_args(self) -> dict:
        """The options nanoGPT does not know, kept beside model_args in a checkpoint."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("ours")}

    @classmethod
    def from_checkpoint(cls, model_args: dict, our_args: dict | None = None, **overrides) -> "GPTConfig":
        """Any checkpoint's config: ours, our older ones (gelu/arch inside model_args) and nanoGPT's (no
        options of ours: the defaults, which are nanoGPT's model). Unknown keys are ignored."""
        known = config_fields(cls)
        args = {k: v for k, v in {**model_args, **(our_args or {}), **overrides}.items() if k in known}
        return cls(**args)


def _check_init_from(init_from: str, allowed: tuple[str, ...]) -> None:
    # A local directory holding a saved Hugging Face GPT2LMHeadModel is accepted too.
    if init_from in allowed or init_from in GPT2_PRESETS or os.path.isdir(os.path.expanduser(init_from)):
        return
    choices = ", ".join(allowed + GPT2_PRESETS)
    raise ConfigError(f"init_from={init_from!r} is not known; use one of {choices}, or a directory saved by save_pretrained")


@dataclass
class TrainConfig(ModelOptions):
    """Everything nanoGPT's train.py reads, under the same names, plus the Ray knobs."""

    # I/O
    out_dir: str = "out"
    """Where ckpt.pt (the latest good checkpoint) is written, as in nanoGPT."""
    eval_interval: int = 2000
    """Iterations between evaluations (and checkpoints, and Ray reports of val loss)."""
    log_interval: int = 1
    """Iterations between log lines; each log is also a ray.train.report, so keep it >1 on big runs."""
    eval_iters: int = 200
    """Batches per split per evaluation, shared out across the workers."""
    eval_only: bool = False
    """Evaluate once and exit."""
    always_save_checkpoint: bool = True
    """Checkpoint at every eval, not only when val loss improves."""
    init_from: str = "scratch"
    """'scratch', 'resume' (from out_dir/ckpt.pt), 'gpt2*', or a local GPT-2 directory."""
    # wandb logging
    wandb_log: bool = False
    """Log metrics to Weights & Biases from rank 0 (needs the wandb extra)."""
    wandb_project: str = "owt"
    """W&B project the run is logged under."""
    wandb_run_name: str = "gpt2"
    """W&B run name."""
    # data
    dataset: str = "openwebtext"
    """Folder under data_root holding train.bin, val.bin and meta.json."""
    data_root: str = "data"
    """Root folder of prepared datasets; must be readable by every worker (shared on multi-node)."""
    gradient_accumulation_steps: int = 5 * 8
    """Global micro-steps per iteration, as in nanoGPT: split across workers, so it must divide by num_workers."""
    batch_size: int = 12
    """Micro-batch size per micro-step."""
    # model: n_layer, n_head, n_embd, block_size, dropout, bias, gelu, arch (ModelOptions)
    # optimizer
    optimizer: typing.Literal["adamw", "muon"] = "adamw"
    """'adamw' as nanoGPT; 'muon': Muon (at muon_lr) for the blocks' 2-D weights, AdamW (at learning_rate) for the rest."""
    muon_lr: float = 0.02
    """Muon's peak learning rate (optimizer='muon'); the lr schedule scales it like learning_rate."""
    muon_momentum: float = 0.95
    """Muon's (Nesterov) momentum."""
    learning_rate: float = 6e-4
    """AdamW's peak learning rate (with optimizer='muon': embeddings and head only)."""
    max_iters: int = 600000
    """Optimizer steps to train for."""
    weight_decay: float = 1e-1
    """AdamW weight decay on 2-D weights (embeddings and matmuls), as nanoGPT."""
    beta1: float = 0.9
    """AdamW's beta1."""
    beta2: float = 0.95
    """AdamW's beta2."""
    grad_clip: float = 1.0
    """Clip gradient norm at this value; 0 disables."""
    # learning rate decay
    decay_lr: bool = True
    """Warm up, then cosine-decay the learning rate to min_lr; False keeps it constant."""
    warmup_iters: int = 2000
    """Iterations of linear learning-rate warmup."""
    lr_decay_iters: int = 600000
    """Should be ~max_iters per Chinchilla."""
    min_lr: float = 6e-5
    """Should be ~learning_rate / 10 per Chinchilla."""
    # system
    backend: Backend = "auto"
    """DDP backend; 'auto' is nccl with GPUs and gloo without (nanoGPT hard-codes nccl)."""
    parallelism: Parallelism = "ddp"
    """'ddp': every worker holds the whole model; 'fsdp': FSDP2 shards parameters, gradients and optimizer
    state over the workers (for models whose training state does not fit on one device; see docs/training.md)."""
    device: str = "auto"
    """'auto' picks cuda when the worker has a GPU, else cpu; or 'cpu', 'cuda', 'cuda:N', 'mps'."""
    dtype: Dtype = "auto"
    """'auto' is bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU."""
    compile: bool = True
    """torch.compile the model (slow to start on CPU; the CPU configs turn it off)."""
    seed: int = 1337
    """Base seed; worker r uses seed + r, as nanoGPT's seed_offset."""
    data_order: DataOrder = "nanogpt"
    """Where batches' randomness comes from. 'nanogpt': torch's global generator, drawn in nanoGPT's order (model
    init, the first batch, eval batches, training batches, dropout), so one process prints nanoGPT's losses; each
    worker draws its own batches (seed + rank), so the worker count changes the run, as in nanoGPT.
    'worker_invariant': each global micro-step and eval batch has a generator of its own, so any worker count
    (and an elastic resize) trains on the same batches."""
    # Ray
    num_workers: int = 1
    """Ray Train workers (DDP ranks); min_workers/max_workers make the group elastic instead. 0 is Ray Train's
    local mode (this process, no cluster), which one worker with no cluster named and no storage_path gets too."""
    min_workers: int = 0
    """Elastic training (with max_workers; 0 = a fixed num_workers): Ray Train runs between min_workers and
    max_workers workers as the cluster's nodes come and go, restarting from the latest checkpoint at each
    change; tokens per iteration stay the same (each worker's micro-steps are recomputed)."""
    max_workers: int = 0
    """Elastic training's upper bound (see min_workers)."""
    elastic_resize_interval_s: float = 60.0
    """Elastic training: how often Ray Train looks for room to grow the worker group."""
    use_gpu: bool | None = None
    """One GPU per worker; None means yes when the cluster has GPUs."""
    cpus_per_worker: float = 0.0
    """CPUs Ray reserves per worker, and its torch threads on CPU; 0 = the node's CPUs divided by the workers
    placed on it (training on CPU; 1 with GPUs)."""
    resources_per_worker: dict = field(default_factory=dict)
    """Extra Ray resources per worker, e.g. {'accelerator_type:H100': 0.01}."""
    placement_strategy: PlacementStrategy = "PACK"
    """Ray placement of workers: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD."""
    storage_path: str = ""
    """Where Ray persists checkpoints; '' means <out_dir>/ray. Must be shared (NFS, s3://) on several nodes."""
    run_name: str = ""
    """Ray run name; '' derives it from out_dir so a rerun resumes the same run."""
    max_failures: int = 3
    """Worker-group restarts from the latest checkpoint before the run fails."""
    num_checkpoints_to_keep: int = 2
    """Latest Ray checkpoints kept under storage_path; out_dir/ckpt.pt is kept apart from them."""
    max_nan_rollbacks: int = 3
    """Non-finite losses survived (each rolls back to the last checkpoint) before the run fails."""
    nan_skip_batches: bool = True
    """After a rollback, move the data past the batches of the iteration whose loss was not finite, so a bad
    batch is not replayed; False replays the same batches (exactly the run without the fault)."""
    nan_lr_scale: float = 1.0
    """Multiply the learning rate by this after each rollback (e.g. 0.5 when the lr caused it); 1 keeps it."""
    address: str = ""
    """Ray cluster to join; '' uses RAY_ADDRESS, else starts a local cluster."""
    dashboard: bool = False
    """Start Ray's dashboard with the local cluster `train` starts (a joined cluster keeps its own). Off: on a
    2-core machine its processes cost 1-2 s of startup and ~7% of the training step time."""
    report_interval: int = 0
    """Iterations between metrics-only reports to Ray Train (each is a barrier of ~0.1 s); 0 reports to Ray at
    evaluations and checkpoints only. Log lines print every log_interval regardless."""
    verbose: bool = False
    """Print where the seconds go from the command to the first step (imports, Ray, workers, data, model, eval)."""
    dry_run: bool = False
    """Make every check a run makes before it starts (data, resume, storage, device, whether the workers fit), print
    the plan (mode, workers, devices, tokens per iteration, storage) and exit without starting Ray or training."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_device(self.device)
        _check_init_from(self.init_from, ("scratch", "resume"))
        if self.cpus_per_worker < 0:
            raise ConfigError(f"cpus_per_worker={self.cpus_per_worker} must be >= 0 (0 picks it from the cluster)")
        if self.report_interval < 0:
            raise ConfigError(f"report_interval={self.report_interval} must be >= 0 (0 reports at evaluations only)")
        for key in ("gradient_accumulation_steps", "batch_size", "eval_iters", "log_interval", "eval_interval"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers} must be >= 0 (0 is Ray Train's local mode)")
        if self.max_iters < 0:
            raise ConfigError(f"max_iters={self.max_iters} must be >= 0")
        if self.parallelism == "fsdp" and self.dtype == "float16":
            raise ConfigError("parallelism='fsdp' does not support dtype='float16' (it needs loss scaling); "
                              "pass --dtype=bfloat16 (or float32), or --parallelism=ddp")
        if not 0 < self.nan_lr_scale <= 1:
            raise ConfigError(f"nan_lr_scale={self.nan_lr_scale} must be in (0, 1]")
        if self.muon_lr <= 0:
            raise ConfigError(f"muon_lr={self.muon_lr} must be > 0")
        if self.optimizer == "muon" and self.parallelism == "fsdp":
            raise ConfigError("optimizer='muon' needs each weight matrix whole, and parallelism='fsdp' shards them; "
                              "use --parallelism=ddp with Muon, or --optimizer=adamw with FSDP")
        if (self.min_workers or self.max_workers) and not 1 <= self.min_workers <= self.max_workers:
            raise ConfigError(f"min_workers={self.min_workers}, max_workers={self.max_workers}: elastic training needs "
                              "1 <= min_workers <= max_workers (or both 0 for a fixed num_workers)")
        for n in self.worker_counts():
            if self.gradient_accumulation_steps % n != 0:
                what = f"num_workers={n}" if not self.is_elastic() else (
                    f"every worker count from min_workers={self.min_workers} to max_workers={self.max_workers} ({n} does not)")
                raise ConfigError(f"gradient_accumulation_steps={self.gradient_accumulation_steps} must divide by {what}: "
                                  "it is the global number of micro-steps per iteration, as in nanoGPT")

    def is_elastic(self) -> bool:
        return self.max_workers > 0

    def worker_counts(self) -> range:
        """Every worker count the run may train on."""
        fixed = max(1, self.num_workers)  # local mode: one process (torchrun's ranks are checked by the loop)
        return range(self.min_workers, self.max_workers + 1) if self.is_elastic() else range(fixed, fixed + 1)

    def tokens_per_iter(self) -> int:
        """Global tokens per optimizer step, independent of num_workers."""
        return self.gradient_accumulation_steps * self.batch_size * self.block_size

    def micro_steps_per_worker(self) -> int:
        return self.gradient_accumulation_steps // max(1, self.num_workers)

    def dataset_dir(self) -> str:
        return os.path.join(self.data_root, self.dataset)

    def resolved_storage_path(self) -> str:
        return self.storage_path or os.path.join(self.out_dir, "ray")

    def resolved_run_name(self) -> str:
        return self.run_name or os.path.basename(os.path.normpath(self.out_dir)) or "nanogpt"



@dataclass
class CheckpointSource:
    """Where sample, serve and export take their model from (the first fields of each)."""

    init_from: str = "resume"
    """'resume' (from out_dir/ckpt.pt), 'gpt2*', or a local GPT-2 directory."""
    out_dir: str = "out"
    """Folder holding ckpt.pt when init_from='resume'."""
    ckpt_path: str = ""
    """An explicit checkpoint file or Ray checkpoint directory; overrides out_dir."""
    data_root: str = "data"
    """Where the checkpoint's dataset meta.json (the char vocab) is looked up."""


class SamplingError(ConfigError):
    """A sampling parameter out of range: `param` names it, `requirement` says what is accepted, so a caller
    with its own name for the field (the OpenAI API's max_tokens) can say the same thing in its words."""

    def __init__(self, param: str, value, requirement: str):
        super().__init__(f"{param}={value!r} {requirement}")
        self.param, self.value, self.requirement = param, value, requirement

    def __reduce__(self):
        return type(self), (self.param, self.value, self.requirement)


def _sampling_number(param: str, value, kind, requirement: str, accept, optional: bool = False):
    """value as `kind` when it is a number of that kind that `accept`s, else SamplingError. Requests and prompt
    files hand in raw JSON, so booleans and strings are refused here, not only out-of-range numbers."""
    if value is None and optional:
        return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (kind is int and not float(value).is_integer()) or not accept(value):
        raise SamplingError(param, value, requirement)
    return kind(value)


@dataclass
class SamplingParams:
    """How tokens are drawn: the one list of sampling parameters, validated here and only here. `sample`,
    batch rows, served requests and the engine take it; the defaults are nanoGPT's sample.py."""

    max_new_tokens: int = 500
    """Tokens generated after the prompt."""
    temperature: float = 0.8
    """1.0 keeps the model's distribution, lower is more conservative; must be > 0."""
    top_k: int | None = 200
    """Keep only the k most likely tokens (1 is greedy); None disables."""
    top_p: float | None = None
    """Nucleus sampling: keep the smallest set of tokens with this much probability; None disables."""
    seed: int | None = 1337
    """Sample i of a prompt draws from its own generator seeded seed + i; None seeds each from the OS."""
    context_shift: int = 0
    """Past block_size: 0 slides the window one token a step, exactly as nanoGPT (full recompute each token);
    n > 0 drops the oldest n tokens at once and keeps the KV cache between shifts (much faster, not nanoGPT's tokens)."""

    def __post_init__(self) -> None:
        self.max_new_tokens = _sampling_number("max_new_tokens", self.max_new_tokens, int, "must be an integer >= 1",
                                               lambda v: v >= 1)
        self.temperature = _sampling_number("temperature", self.temperature, float, "must be a number > 0 (top_k=1 is greedy)",
                                            lambda v: v > 0)
        self.top_k = _sampling_number("top_k", self.top_k, int, "must be an integer >= 1, or None to sample from the "
                                      "whole vocabulary", lambda v: v >= 1, optional=True)
        self.top_p = _sampling_number("top_p", self.top_p, float, "must be in (0, 1], or None to turn nucleus sampling "
                                      "off", lambda v: 0 < v <= 1, optional=True)
        self.seed = _sampling_number("seed", self.seed, int, "must be an integer, or None for a random seed",
                                     lambda v: True, optional=True)
        self.context_shift = _sampling_number("context_shift", self.context_shift, int, "must be an integer >= 0 (0 "
                                              "keeps nanoGPT's exact sliding window)", lambda v: v >= 0)

    def sampling_params(self) -> SamplingParams:
        """Just the sampling parameters (of a config that derives from this class)."""
        return SamplingParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingParams)})

    def generation_kwargs(self) -> dict:
        """What engine.generate takes per batch (the seed goes into each row's generator instead)."""
        return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, context_shift=self.context_shift)


@dataclass
class SampleConfig(SamplingParams, CheckpointSource):
    """sample.py's knobs (the sampling parameters come from SamplingParams), plus batch sampling on Ray actors."""

    start: str = "\n"
    """Prompt text, or FILE:path to read it from a file."""
    num_samples: int = 10
    """Samples drawn from the prompt (nanoGPT's 10); use 1 with top_k=1 (greedy), which repeats itself."""
    device: str = "auto"
    """'auto' picks cuda when present, else cpu; or 'cpu', 'cuda', 'cuda:N', 'mps'."""
    dtype: Dtype = "auto"
    """'auto' is bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU."""
    compile: bool = False
    """torch.compile the model (slow to start; rarely worth it for sampling)."""
    threads: int = 0
    """torch threads for decoding on CPU; 0: an explicit OMP_NUM_THREADS (Ray sets it per actor to its CPUs), else
    1 or all cores, whichever a short probe finds faster for this model on this machine now (see docs/usage.md)."""
    # batch sampling on Ray actors
    prompts: str = ""
    """A .jsonl, .parquet or .txt file of prompts; switches to batch sampling."""
    output: str = ""
    """Where batch results go (.jsonl or .parquet)."""
    num_actors: int = 0
    """Sampling actors; 0 means one per GPU, or per free CPU slot."""
    gpus_per_actor: float = 0.0
    """GPUs each sampling actor reserves (0 samples on CPU)."""
    batch_size: int = 16
    """Rows generated together by one actor."""
    truncate: bool = False
    """Keep the last block_size tokens of a too-long prompt instead of failing that row."""
    resume: bool = False
    """Skip ids already present in the output."""
    address: str = ""
    """Ray cluster to join for --prompts; '' uses RAY_ADDRESS, else starts a local cluster."""
    dashboard: bool = False
    """Start Ray's dashboard with the local cluster --prompts starts (a joined cluster keeps its own)."""
    dry_run: bool = False
    """Load and check the model, the prompt (or the prompts file and the output), print the plan and exit without
    generating or starting Ray. OpenAI's GPT-2 weights are named, not downloaded."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_device(self.device)
        _check_init_from(self.init_from, ("resume",))
        super().__post_init__()
        if self.threads < 0:
            raise ConfigError(f"threads={self.threads} must be >= 0 (0 chooses)")
        for key in ("num_samples", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")


@dataclass
class ServeConfig(CheckpointSource):
    """`nanogpt-ray serve`: an OpenAI-compatible completions server on Ray Serve."""

    model_name: str = ""
    """The `model` clients ask for; empty: the out_dir's folder name, or the init_from name."""
    host: str = "127.0.0.1"
    """Where the HTTP proxy listens; 0.0.0.0 exposes it beyond this machine."""
    port: int = 8000
    """HTTP port of the proxy; a busy port fails in one line before Serve starts."""
    num_replicas: int = 1
    """Fixed number of model replicas; ignored when max_replicas > 0 (autoscaling)."""
    min_replicas: int = 1
    """Autoscaling floor (only with max_replicas > 0)."""
    max_replicas: int = 0
    """> 0 turns autoscaling on, between min_replicas and max_replicas."""
    target_ongoing_requests: float = 16.0
    """Autoscaling target: requests in flight per replica before another replica is added."""
    cpus_per_replica: float = 1.0
    """CPUs Ray reserves per model replica."""
    gpus_per_replica: float = 0.0
    """GPUs per model replica (0 serves on CPU)."""
    max_batch_size: int = 32
    """Rows one replica decodes together; requests beyond it wait in the replica for a free row."""
    max_ongoing_requests: int = 64
    """Requests one replica accepts at once (running + waiting for a row); the rest queue in Serve."""
    max_queued_requests: int = 128
    """Requests Serve queues when every replica is full; beyond it clients get 503 with Retry-After."""
    retry_after_s: float = 1.0
    """The Retry-After hint sent with a 503."""
    device: str = "auto"
    """'auto' picks cuda when the replica has a GPU, else cpu; or 'cpu', 'cuda', 'cuda:N', 'mps'."""
    dtype: Dtype = "auto"
    """'auto' is bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU."""
    threads: int = 0
    """torch threads per replica for decoding on CPU; 0: Ray's OMP_NUM_THREADS (the replica's CPUs), as sample."""
    watch: bool = False
    """Poll the checkpoint (ckpt_path, or out_dir/ckpt.pt) and swap to a newer one (by iter_num/mtime) without
    dropping requests in flight."""
    watch_interval_s: float = 5.0
    """How often --watch polls the checkpoint."""
    address: str = ""
    """Ray cluster to deploy on (or RAY_ADDRESS); empty starts a local one."""
    dashboard: bool = False
    """Start Ray's dashboard (Serve's page included) with the local cluster serve starts."""
    dry_run: bool = False
    """Load and check the model and that the port is free, print the plan (endpoint, replicas, cluster) and exit
    without starting Ray or serving."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_device(self.device)
        _check_init_from(self.init_from, ("resume",))
        if not 0 < self.port < 65536:
            raise ConfigError(f"port={self.port} must be in 1..65535")
        if self.threads < 0:
            raise ConfigError(f"threads={self.threads} must be >= 0 (0 chooses)")
        for key in ("num_replicas", "max_batch_size", "max_ongoing_requests"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.max_replicas and not 0 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"min_replicas={self.min_replicas} must be in 0..max_replicas={self.max_replicas}")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ConfigError(f"max_queued_requests={self.max_queued_requests} must be >= 1 (or -1: unbounded)")
        if self.watch and self.init_from != "resume":
            raise ConfigError("watch=True polls a checkpoint: it needs init_from='resume'")
        if self.watch_interval_s <= 0 or self.target_ongoing_requests <= 0:
            raise ConfigError("watch_interval_s and target_ongoing_requests must be > 0")

    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.init_from == "resume":
            return os.path.basename(os.path.normpath(self.ckpt_path or self.out_dir)) or "nanogpt"
        return os.path.basename(os.path.normpath(self.init_from))


@dataclass
class BenchConfig(ModelOptions):
    """bench.py's knobs, plus cluster-wide and scaling benchmarks."""

    batch_size: int = 12
    """Micro-batch size of each timed step."""
    real_data: bool = True
    """Batches from a prepared dataset; False uses random tokens."""
    dataset: str = "openwebtext"
    """Folder under data_root holding train.bin (with real_data=True)."""
    data_root: str = "data"
    """Root folder of prepared datasets."""
    seed: int = 1337
    """Torch seed for the model's initial weights and the batches."""
    device: str = "auto"
    """'auto' picks cuda when present, else cpu; or 'cpu', 'cuda', 'cuda:N', 'mps'."""
    dtype: Dtype = "auto"
    """'auto' is bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU."""
    compile: bool = True
    """torch.compile the model before timing (compilation happens in the warmup steps)."""
    profile: bool = False
    """Write a torch.profiler trace (TensorBoard) instead of the plain timing."""
    profile_dir: str = "bench_profile"
    """Where profile=True writes its trace."""
    warmup_steps: int = 10
    """Untimed steps first (compilation, allocator warmup)."""
    timed_steps: int = 20
    """Steps timed after the warmup."""
    grad_clip: float = 1.0
    """Clip the gradient norm at this value each step, as training does (TrainConfig.grad_clip); 0 disables."""
    cluster: bool = False
    """One benchmark actor per GPU (or per node on CPU clusters), spread over the Ray cluster."""
    scaling: bool = False
    """Time the Ray Train loop with 1..max_workers workers on the same global batch."""
    max_workers: int = 2
    """Largest worker count in scaling mode (1..max_workers)."""
    gradient_accumulation_steps: int = 2
    """Global micro-steps per iteration in scaling mode."""
    json: str = ""
    """Write the result rows to this JSON file."""
    address: str = ""
    """Ray cluster for cluster/scaling mode; '' uses RAY_ADDRESS, else starts a local cluster."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_device(self.device)
        for key in ("batch_size", "timed_steps", "max_workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")


# ----------------------------------------------------------------------------- loading

PATH_KEYS = ("out_dir", "data_root", "storage_path", "ckpt_path", "prompts", "output", "json", "profile_dir", "hf_dir", "base_config")


def config_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def field_doc(cls, name: str) -> str:
    """The docstring under a field (used for --help), read from the class source once."""
    return _field_docs(cls).get(name, "")


_DOC_CACHE: dict[type, dict[str, str]] = {}


def _field_docs(cls) -> dict[str, str]:
    if cls not in _DOC_CACHE:
        import inspect

        docs: dict[str, str] = {}
        for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):  # a subclass's doc wins
            body = ast.parse(inspect.getsource(base)).body[0].body
            for node, following in zip(body, body[1:]):
                if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                    docs[node.target.id] = " ".join(str(following.value.value).split())
        _DOC_CACHE[cls] = docs
    return _DOC_CACHE[cls]


def _closest(name: str, choices) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _field_type(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints[name]


def coerce(cls, key: str, value):
    """Turn a parsed value into the field's type, or say in one line why it cannot be."""
    kind = _field_type(cls, key)
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        if value in choices:
            return value
        raise ConfigError(f"{key}={value!r} is not supported; use one of {', '.join(map(str, choices))}"
                          + (_closest(value, map(str, choices)) if isinstance(value, str) else ""))
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = len(args) < len(typing.get_args(kind))
        kind = args[0]
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise ConfigError(f"{key}=None is not allowed; expected {kind.__name__}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        return value if isinstance(value, str) else str(value)
    elif kind is dict:
        if isinstance(value, dict):
            return value
    elif kind is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):  # --model_sizes=tiny,mini
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # --learning_rates=1e-3
            return [value]
    raise ConfigError(f"{key}={value!r} is not a valid {kind.__name__}" + (" (or None)" if optional else ""))


def _parse_flag_value(cls, key: str, text: str):
    kind = _field_type(cls, key)
    if kind is str or typing.get_origin(kind) is typing.Literal:
        return text  # strings are taken verbatim: --out_dir=123 is the folder '123'
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # like nanoGPT: a bare word stays a string, and coerce() judges it


def _values_from_file(cls, path: str, current: dict) -> dict:
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r} is a directory; pass a .py file of `key = value` lines")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    # runpy runs the file as the user's own script, as nanoGPT's configurator does with exec;
    # seeding it with the current values lets a file say `batch_size = batch_size * 2`.
    try:
        namespace = runpy.run_path(path, init_globals=dict(current))
    except Exception as e:  # the user's script: any error is theirs, so say where it is, not our stack
        raise ConfigError(f"config file {path!r}{_error_line(e, path)}: {type(e).__name__}: {first_line(e)}") from None
    values = {}
    fields = config_fields(cls)
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        if name not in fields:
            raise ConfigError(f"unknown config key {name!r} in {path}{_closest(name, fields)}")
        if name in current and value is current[name]:
            continue
        values[name] = value
    return values


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (a SyntaxError's own message, without the file and line), or
    '(no message)': how someone else's error reads inside one of our one-line errors."""
    text = (error.msg if isinstance(error, SyntaxError) else str(error)) or ""
    return text.strip().splitlines()[0] if text.strip() else "(no message)"


def _error_line(error: BaseException, path: str) -> str:
    """', line N' of the config file where error happened (the deepest frame in that file), or ''."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f", line {error.lineno}"
    target = os.path.realpath(path)
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.realpath(frame.filename) == target]
    return f", line {lines[-1]}" if lines else ""


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """nanoGPT's syntax: bare arguments are config files, `--key=value` are overrides."""
    files, overrides = [], []
    for arg in argv:
        (overrides if arg.startswith("--") else files).append(arg)
    return files, overrides


def split_overrides(overrides, primary, secondary) -> tuple[list[str], dict]:
    """--key=value flags for `primary` (returned as flags, for load_config) and for `secondary` (parsed into
    {key: value}); a key both know stays with primary. A key neither knows fails with the closest of both."""
    primary_fields, secondary_fields = config_fields(primary), config_fields(secondary)
    own, other = [], {}
    for flag in overrides:
        if not flag.startswith("--") or "=" not in flag:
            raise ConfigError(f"cannot read {flag!r}: overrides look like --key=value")
        key, text = flag[2:].split("=", 1)
        if key in primary_fields:
            own.append(flag)
        elif key in secondary_fields:
            other[key] = coerce(secondary, key, _parse_flag_value(secondary, key, text))
        else:
            raise ConfigError(f"unknown config key {key!r}{_closest(key, [*primary_fields, *secondary_fields])}")
    return own, other


def is_uri(path: str) -> bool:
    """A storage URI (s3://, gs://...) rather than a local path; storage.py reads and writes both."""
    return "://" in str(path)


def load_config(cls, files=(), overrides=(), absolute_paths: bool = True):
    """Defaults < config files (in order) < --key=value overrides; returns a validated `cls`."""
    fields = config_fields(cls)
    values = {name: getattr(cls(), name) if f.default is dataclasses.MISSING else f.default for name, f in fields.items()}
    for path in files:
        for key, value in _values_from_file(cls, path, values).items():
            values[key] = coerce(cls, key, value)
    for flag in overrides:
        if not flag.startswith("--") or "=" not in flag:
            raise ConfigError(f"cannot read {flag!r}: overrides look like --key=value")
        key, text = flag[2:].split("=", 1)
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}{_closest(key, fields)}")
        values[key] = coerce(cls, key, _parse_flag_value(cls, key, text))
    if absolute_paths:
        # Ray workers do not share the driver's working directory; a URI means the same everywhere, as given
        for key in PATH_KEYS:
            if key in values and values[key] and not is_uri(values[key]):
                values[key] = os.path.abspath(os.path.expanduser(values[key]))
        init = values.get("init_from")
        if init and init not in GPT2_PRESETS and init not in ("scratch", "resume") and os.path.isdir(os.path.expanduser(init)):
            values["init_from"] = os.path.abspath(os.path.expanduser(init))
    return cls(**values)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    """Rebuild a config from a plain dict (e.g. inside a Ray worker); unknown keys are an error."""
    fields = config_fields(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}{_closest(unknown[0], fields)}")
    return cls(**{k: coerce(cls, k, v) for k, v in values.items()})


@dataclass
class ExportConfig(CheckpointSource):
    """Turn a checkpoint into a Hugging Face GPT2LMHeadModel directory (a char model's tokenizer comes from
    its dataset's meta.json under data_root)."""

    hf_dir: str = ""
    """Where the Hugging Face directory is written; '' means <out_dir>/hf."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_init_from(self.init_from, ("resume",))


# ----------------------------------------------------------------------------- sweeps

MODEL_PRESETS: dict[str, dict[str, int]] = {
    # small shapes that train on a laptop CPU in seconds to minutes
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "mini": dict(n_layer=4, n_head=4, n_embd=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384),  # nanoGPT's shakespeare_char shape
    # the GPT-2 family (124M, 350M, 774M, 1558M)
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}
"""Model sizes a sweep can name: n_layer, n_head and n_embd always move together."""


def model_preset(name: str) -> dict[str, int]:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}{_closest(name, MODEL_PRESETS)}; use one of {', '.join(MODEL_PRESETS)}")
    return dict(MODEL_PRESETS[name])


@dataclass
class SweepConfig:
    """A Ray Tune sweep over learning rate and model size; every trial is one Ray Train run."""

    base_config: str = ""
    """Training config file every trial starts from (e.g. configs/train_shakespeare_char_cpu.py)."""
    train_overrides: dict = field(default_factory=dict)
    """TrainConfig keys set for every trial on top of base_config, e.g. {'max_iters': 200}."""
    learning_rates: list = field(default_factory=list)
    """learning_rate values to grid-search; empty means log-uniform in [lr_min, lr_max]."""
    lr_min: float = 0.0
    """Lower end of the log-uniform learning_rate range (used when learning_rates is empty)."""
    lr_max: float = 0.0
    """Upper end of the log-uniform learning_rate range; 0 with no learning_rates keeps the base lr."""
    model_sizes: list = field(default_factory=list)
    """Model presets to grid-search (tiny, mini, small, gpt2, gpt2-medium, ...); empty keeps the base shape."""
    search_space: dict = field(default_factory=dict)
    """Other TrainConfig keys to grid-search: {'batch_size': [32, 64]}."""
    num_samples: int = 1
    """Repeats of the grid (each draws a fresh lr when lr is log-uniform)."""
    scheduler: typing.Literal["asha", "none"] = "asha"
    """'asha' stops poor trials early on val_loss at eval points; 'none' runs every trial to max_iters."""
    grace_period: int = 0
    """Iterations every trial runs before ASHA may stop it; 0 means two eval intervals."""
    reduction_factor: float = 2.0
    """ASHA keeps the best 1/reduction_factor of trials at each rung."""
    max_concurrent_trials: int = 0
    """Trials running at once; 0 derives it from the cluster's CPUs/GPUs and the resources per trial."""
    workers_per_trial: int = 1
    """Ray Train workers (DDP ranks) per trial."""
    cpus_per_worker: float = 0.0
    """CPUs reserved per Train worker (its torch threads too); the trial's driver takes 0.01 CPU on top. 0: as
    many trials at once as the cluster has CPUs per trial, sharing every CPU out among their workers."""
    gpus_per_worker: float = 0.0
    """GPUs per Train worker (0 trains on CPU)."""
    storage_path: str = "sweeps"
    """Root folder of sweeps; results go to <storage_path>/<sweep_name>/ (shared storage on multi-node)."""
    sweep_name: str = "sweep"
    """Name of the sweep; rerunning with --resume continues it."""
    resume: bool = False
    """Continue an interrupted sweep: finished trials are kept, unfinished ones carry on from their checkpoints."""
    scaling_law: bool = False
    """Fit L(N) = a*N^-alpha + c to the best val loss per model size (needs >= 3 sizes)."""
    token_budget: int = 0
    """Tokens each trial trains on (sets max_iters from tokens_per_iter); 0 keeps max_iters."""
    address: str = ""
    """Ray cluster to join; '' uses RAY_ADDRESS, else starts a local cluster."""
    dry_run: bool = False
    """Make the sweep's checks (configs, dataset, storage, whether a trial's workers fit), print the plan (trials, how
    many at once, search space, scheduler) and exit without starting Ray."""

    def __post_init__(self) -> None:
        _check_choices(self)
        train_keys = config_fields(TrainConfig)
        for source in ("train_overrides", "search_space"):
            for key in getattr(self, source):
                if key not in train_keys:
                    raise ConfigError(f"{source} names unknown config key {key!r}{_closest(key, train_keys)}")
        for key, values in self.search_space.items():
            if key in ("n_layer", "n_head", "n_embd"):
                raise ConfigError(f"search_space key {key!r}: sweep model shape through model_sizes (presets), not single knobs")
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"search_space[{key!r}] must be a non-empty list of values, got {values!r}")
        for lr in self.learning_rates:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
                raise ConfigError(f"learning_rates holds {lr!r}; every learning rate must be a number > 0")
        if not self.learning_rates and (self.lr_min or self.lr_max):
            if self.lr_min <= 0 or self.lr_max <= 0:
                raise ConfigError(f"lr range [{self.lr_min}, {self.lr_max}] is empty; set both lr_min and lr_max > 0")
            if self.lr_min >= self.lr_max:
                raise ConfigError(f"lr range [{self.lr_min}, {self.lr_max}] is empty; lr_min must be < lr_max")
        for name in self.model_sizes:
            model_preset(name)
        for key in ("num_samples", "workers_per_trial"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        for key in ("grace_period", "max_concurrent_trials", "token_budget"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 0")
        if self.reduction_factor <= 1:
            raise ConfigError(f"reduction_factor={self.reduction_factor} must be > 1")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ConfigError("cpus_per_worker and gpus_per_worker must be >= 0 (cpus_per_worker=0 shares out the cluster)")
        if not self.sweep_name or os.sep in self.sweep_name:
            raise ConfigError(f"sweep_name={self.sweep_name!r} must be a plain folder name")
        if self.scaling_law and len(self.model_sizes) < 3:
            raise ConfigError(f"scaling_law needs >= 3 model_sizes to fit a, alpha and c; got {len(self.model_sizes)}")

    def sweep_dir(self) -> str:
        return os.path.join(self.storage_path, self.sweep_name)


PREPARE_DATASETS = ("shakespeare_char", "shakespeare", "openwebtext", "text")


@dataclass
class PrepareConfig:
    """Tokenize a corpus into <data_root>/<dataset>/train.bin, val.bin and meta.json."""

    dataset: str = "shakespeare_char"
    """shakespeare_char, shakespeare, openwebtext, or text (any files); given as the first argument."""
    data_root: str = "data"
    """Root folder of prepared datasets (the key training reads too)."""
    output_name: str = ""
    """Folder name under data_root; '' means the dataset name."""
    input: str = ""
    """Input files: a path, a glob, or several separated by commas; local or s3://, gs:// (pyarrow filesystems)."""
    format: typing.Literal["auto", "txt", "jsonl", "parquet"] = "auto"
    """txt, jsonl or parquet; 'auto' goes by each file's extension."""
    txt_mode: typing.Literal["file", "line"] = "file"
    """For .txt: 'file' (one document per file) or 'line' (one document per line)."""
    field: str = "text"
    """The jsonl field or parquet column holding the text."""
    tokenizer: str = "gpt2"
    """A tiktoken encoding: gpt2 (r50k_base) or another name; vocabularies over 65,536 are stored as uint32."""
    val_fraction: float | None = None
    """Share of documents in val.bin, picked by a seeded hash of each document; None is 0.0005 for
    openwebtext (nanoGPT's) and 0.1 for text. Tiny Shakespeare splits by characters instead: the last
    val_fraction of the text (None: nanoGPT's 10%) is val."""
    seed: int = 2357
    """Seed of the document split."""
    errors: typing.Literal["strict", "replace"] = "strict"
    """Bytes that are not UTF-8: 'strict' fails naming the file, 'replace' substitutes U+FFFD."""
    parallel: bool | None = None
    """Tokenize on Ray Data; None means yes when the inputs total 64 MB or more (a local Ray cluster takes
    seconds to start). False tokenizes in this process; the bytes written are the same either way."""
    num_workers: int = 0
    """Ray Data tokenizer actors (one CPU each); 0 means every CPU of the cluster."""
    chunk_mb: int = 16
    """Work unit of jsonl and line-mode txt files: byte ranges of about this size, cut at line ends
    (parquet: one row group; file-mode txt: one file). Memory per tokenizer stays near a few units."""
    address: str = ""
    """Ray cluster to use; '' uses RAY_ADDRESS, else starts a local one."""
    progress: bool = True
    """A progress bar on stderr while tokenizing."""
    url: str = SHAKESPEARE_URL
    """Where tiny Shakespeare is downloaded from when there is no --input and no copy in the dataset folder;
    left at its default, the copy shipped in data/shakespeare_char/input.txt.gz is read instead."""

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.dataset not in PREPARE_DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}{_closest(self.dataset, PREPARE_DATASETS)} "
                              f"(use one of {', '.join(PREPARE_DATASETS)})")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if self.chunk_mb < 1 or self.num_workers < 0:
            raise ConfigError(f"chunk_mb={self.chunk_mb} must be >= 1 and num_workers={self.num_workers} >= 0")
        if self.dataset == "text" and not self.input:
            raise ConfigError("dataset 'text' needs --input=FILES (paths or globs, comma-separated)")

    def output_dir(self) -> str:
        return os.path.join(self.data_root, self.output_name or self.dataset)

    def resolved_val_fraction(self) -> float:
        if self.val_fraction is not None:
            return self.val_fraction
        return 0.0005 if self.dataset == "openwebtext" else 0.1
