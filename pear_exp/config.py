"""Typed configuration: the schema every Hydra config is validated against.

conf/config.yaml names `base_config` (registered below) first in its defaults list, so every group
file and every command-line override is checked against these dataclasses at compose time: an
unknown key or a value outside an enum fails before anything runs. `__main__` converts the
composed DictConfig once into a `Config` and hands each stage only its own sub-config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigValueError(ValueError):
    """A combination of values the schema refuses (raised in __post_init__, so by
    OmegaConf.to_object); `python -m pear_exp` prints it as one line before anything runs."""


class WeightLevel(Enum):
    """The SFT loss weights: plain SFT, PEAR at one of its granularities, or a relative of PEAR
    (docs/method.md; each option's formula and source in conf/weighting/<option>.yaml)."""

    none = "none"  # plain SFT: every loss token has weight 1
    token = "token"  # PEAR (pear_exp.weighting.pear_weights)
    block = "block"
    sequence = "sequence"
    dft = "dft"  # DFT (arXiv 2508.05629): the current probability of the token, detached
    # iw-SFT (arXiv 2507.12856): importance weights of the current model against the frozen
    # initial model, per sequence (its official default) or per token
    iw_sft = "iw_sft"
    iw_sft_token = "iw_sft_token"
    # ASFT (arXiv 2509.23753): DFT's weights plus a KL anchor to the frozen initial model
    asft = "asft"

    @property
    def needs_reference(self) -> bool:
        """Uses the frozen initial model (loaded beside the one being trained)."""
        return self in (WeightLevel.iw_sft, WeightLevel.iw_sft_token, WeightLevel.asft)

    @property
    def settings(self) -> tuple[str, ...]:
        """The weighting.* keys this option reads (a command line that sets another is refused:
        pear_exp/__main__.py check_values)."""
        pear = ("delta_clip", "log_weight_clip", "target_temperature", "normalization")
        return {
            "none": (), "sequence": pear, "token": pear + ("gamma",),
            "block": pear + ("gamma", "block_size"), "dft": ("normalization",),
            "iw_sft": ("iw_clip", "iw_temperature", "normalization"),
            "iw_sft_token": ("iw_clip", "normalization"),
            "asft": ("asft_kl_coef", "normalization"),
        }[self.value]

    @property
    def is_pear(self) -> bool:
        """PEAR's importance weights (not plain SFT, not a relative)."""
        return self in (WeightLevel.token, WeightLevel.block, WeightLevel.sequence)


class Normalization(Enum):
    tokens = "tokens"  # N = loss tokens in the optimizer step (docs/method.md, Normalisation)
    weights = "weights"  # self-normalised: N = sum of W over the optimizer step


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # bf16 autocast for the forward pass; master weights stay fp32
    # bf16 where it pays, else fp32 (pear_exp/train/loop.py, resolve_precision): GPUs with
    # bf16; CPUs with bf16 matrix units (AMX) for models of hidden size >= 256
    auto = "auto"


class PretrainData(Enum):
    solutions = "solutions"  # the task's own solver answers: makes a teacher
    domain = "domain"  # text of the task's domain that is not the task: makes a student base


class SolutionStyle(Enum):  # how a Countdown solution is written (tasks/countdown.py restyle)
    steps = "steps"  # worked steps, inner operation first, then the answer (the game's format)
    terse = "terse"  # the answer line alone
    reverse = "reverse"  # worked steps, outermost (goal) first, then the answer


class Stage(Enum):
    behavior = "behavior"
    sft = "sft"
    rl = "rl"
    evaluate = "evaluate"


class BehaviorSource(Enum):
    teacher = "teacher"  # the teacher samples responses; verified-correct ones are kept
    dataset = "dataset"  # an existing prompt/response dataset, scored by the teacher


class BaseLoss(Enum):
    """The per-token SFT loss that the weights multiply (docs/method.md, Base loss)."""

    nll = "nll"  # -log pi_theta(y_t): the data token's negative log-likelihood
    # KL(pi_b || pi_theta) at every response position, over the behavior policy's stored top-k
    # tokens plus one bucket for the rest of the vocabulary (needs behavior.top_k > 0)
    kl = "kl"


class Engine(Enum):
    hf = "hf"
    vllm = "vllm"


class LossAggregation(Enum):
    token_mean = "token_mean"
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"


class ParallelStrategy(Enum):
    ddp = "ddp"  # every rank holds the whole model and optimizer; gradients are all-reduced
    fsdp = "fsdp"  # FSDP2: parameters, gradients and optimizer states sharded over the ranks


class LoggerBackend(Enum):
    wandb = "wandb"
    none = "none"


class WandbMode(Enum):
    auto = "auto"  # online when an API key is configured, otherwise offline
    online = "online"
    offline = "offline"


@dataclass
class TinyModelConfig:
    """A small Qwen3-architecture model that the framework builds, pretrains and caches itself."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 32  # vLLM's CPU attention needs 32 or 64
    intermediate_size: int = 384
    max_positions: int = 256
    pretrain: PretrainData = PretrainData.solutions
    pretrain_examples: int = 20000
    pretrain_steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 1234
    # Designed teacher/student mismatch (experiments/tiny_mismatch); the defaults change nothing.
    # pretrain=domain: this fraction of the examples are game solutions instead (styled as
    # below), so the student base already solves some instances in its own style.
    solutions_frac: float = 0.0
    # Game solutions in the pretraining data are written in `alt_style` with this probability
    # (Countdown only), otherwise in the steps style.
    alt_style: SolutionStyle = SolutionStyle.steps
    alt_style_frac: float = 0.0


class ModelType(Enum):
    qwen2 = "qwen2"  # Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen: q, k, v projections with bias
    qwen3 = "qwen3"  # Qwen3: no q, k, v bias; RMSNorm over each head of q and k


@dataclass
class ArchitectureConfig:
    """The numbers of a checkpoint's config.json that plan mode (pear_exp/plan.py) needs for the
    exact parameter count and the memory estimate without downloading anything. A config.json
    found locally (model.path a directory, or in the Hugging Face cache) takes precedence."""

    model_type: ModelType = MISSING
    num_layers: int = MISSING  # num_hidden_layers
    hidden_size: int = MISSING
    num_heads: int = MISSING  # num_attention_heads
    num_kv_heads: int = MISSING  # num_key_value_heads (grouped-query attention)
    head_dim: int = MISSING  # hidden_size / num_heads for Qwen2; explicit in Qwen3 configs
    intermediate_size: int = MISSING  # SwiGLU width
    vocab_size: int = MISSING  # embedding rows (padded above the tokenizer's length)
    tie_word_embeddings: bool = MISSING  # LM head shares the embedding matrix


@dataclass
class SamplingConfig:
    """The model card's recommended sampling; experiment presets point behavior and evaluation
    sampling at it (e.g. behavior.temperature: ${teacher.sampling.temperature})."""

    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class ModelConfig:
    name: str = "tiny"
    path: Optional[str] = None  # hub id or local directory; null builds the tiny model below
    tiny: Optional[TinyModelConfig] = None
    dtype: str = "float32"  # torch dtype the weights are loaded in
    trust_remote_code: bool = False
    # Passed to the chat template for every prompt, e.g. {enable_thinking: false} for Qwen3.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Prompt + response tokens the checkpoint supports (max_position_embeddings); plan mode
    # checks generation lengths against it. null: unknown (tiny models: tiny.max_positions).
    context_length: Optional[int] = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    architecture: Optional[ArchitectureConfig] = None  # null: tiny, or read from config.json


@dataclass
class WeightingConfig:
    level: WeightLevel = WeightLevel.block
    block_size: int = 4
    gamma: float = 0.999
    delta_clip: list[float] = field(default_factory=lambda: [-0.08, 0.3])
    log_weight_clip: list[float] = field(default_factory=lambda: [-10.0, 5.0])
    # The target policy is the current model evaluated at the RL sampling temperature
    # (docs/method.md, Target policy): conf/config.yaml sets ${rl.temperature}; 1.0 is the
    # default of Python-built configs.
    target_temperature: float = 1.0
    normalization: Normalization = Normalization.tokens
    # iw-SFT only (conf/weighting/iw_sft*.yaml): the clamp of its weights (null: the official
    # code's for the variant, weighting.IW_SFT_CLIPS) and the scale of the sequence variant's
    # mean log-ratio
    iw_clip: Optional[list[float]] = None
    iw_temperature: float = 1.0
    # ASFT only (conf/weighting/asft.yaml): the coefficient of its KL(pi_ref || pi_theta) anchor
    asft_kl_coef: float = 0.1


class TaskKind(Enum):
    countdown = "countdown"  # the tiny world's own game (pear_exp/tasks/countdown.py)
    math = "math"  # \boxed{} answers graded by math-verify (pear_exp/tasks/math.py)
    game = "game"  # any reasoning-gym game (pear_exp/tasks/games.py)


@dataclass
class TaskConfig:
    """What every task kind has; each kind's own settings live in its subclass below, so a key of
    another kind (`task=aime2025 task.num_numbers=5`) fails at compose time like a typo."""

    name: str = "countdown"  # label in metric names: eval/<name>/...
    kind: TaskKind = TaskKind.countdown
    num_train: int = 4000  # training prompts (behavior data is sampled for these)
    num_eval: int = 200  # held-out prompts, removed from training; 0 = the whole eval set
    data_seed: int = 0  # fixed split, independent of the run's seed
    system_prompt: Optional[str] = None


@dataclass
class CountdownTaskConfig(TaskConfig):
    """The tiny world's game (pear_exp/tasks/countdown.py)."""

    kind: TaskKind = TaskKind.countdown
    num_numbers: int = 3
    min_value: int = 1
    max_value: int = 20
    max_target: int = 999


@dataclass
class MathTaskConfig(TaskConfig):
    """\\boxed{} answers graded by math-verify (pear_exp/tasks/math.py)."""

    kind: TaskKind = TaskKind.math
    eval_set: str = "math500"  # a shipped set (aime2024, aime2025, math500), a JSONL path or a datasets id
    train_set: Optional[str] = None
    grade_timeout: float = 5.0  # seconds per math-verify check, then it scores 0


@dataclass
class GameTaskConfig(TaskConfig):
    """Any reasoning-gym game and its generator's parameters (pear_exp/tasks/games.py)."""

    kind: TaskKind = TaskKind.game
    game: Optional[str] = None
    game_params: dict[str, Any] = field(default_factory=dict)


# Settings only the vLLM engine reads. The GPU presets set them and stay switchable to the hf
# engine (`+experiment=aime_qwen3 rollout=hf`, as the real-shape tests run every preset), so the
# schema keeps them whichever engine is chosen; given on the command line with rollout=hf, they
# are refused (pear_exp/__main__.py check_values) as a key of another option would be.
VLLM_ONLY = ("tensor_parallel_size", "policy_tensor_parallel_size", "gpu_memory_utilization",
             "dtype", "max_model_len", "enable_sleep_mode")


@dataclass
class RolloutConfig:
    engine: Engine = Engine.hf
    # Sequences per hf generate call, and per teacher-forced scoring batch of
    # behavior.source=dataset (an hf forward whichever engine generates).
    batch_size: int = 512
    # vLLM only (VLLM_ONLY):
    tensor_parallel_size: int = 1  # the teacher's engine (behavior sampling)
    # Engines serving the student (RL rollouts, evaluation); null: tensor_parallel_size. At 1
    # the weight sync is checked exactly (a fingerprint); above 1 by the log-prob probe alone.
    policy_tensor_parallel_size: Optional[int] = None
    gpu_memory_utilization: float = 0.5
    dtype: str = "auto"
    max_model_len: int = 4096
    enable_sleep_mode: bool = False  # GPU: free the engine's memory while the trainer steps
    # After each weight sync (pear_exp/train/grpo.py, step 6) the engine's weights are checked
    # exactly (fingerprint); then the mean |engine - trainer| log-prob on a fixed probe batch,
    # with the trainer in the engine's dtype, must not exceed this: an empirical margin
    # (measured: bf16 rounding 0.02-0.05 at logits of 30, another model 0.8; bf16 holds a logit
    # below 64 to within 0.125, about 0.25 of log-prob at temperature 1, more below).
    sync_tolerance: float = 0.25

    def engine_tensor_parallel(self, policy: bool) -> int:
        """GPUs of the engine serving the student (`policy`) or the teacher."""
        if policy and self.policy_tensor_parallel_size is not None:
            return self.policy_tensor_parallel_size
        return self.tensor_parallel_size


@dataclass
class BehaviorConfig:
    source: BehaviorSource = BehaviorSource.teacher
    dataset: Optional[str] = None  # JSONL path or datasets id with prompt/response columns
    samples_per_prompt: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    keep_only_correct: bool = True
    # > 0: also store, for every response token, the behavior policy's top-k token ids and
    # log-probs (of the distribution that sampled it, or at `temperature` when scoring), which
    # sft.base_loss=kl distils from; the whole distribution when the vocabulary is smaller.
    top_k: int = 0
    # Sweep points that differ only in weighting or training settings sample the same data:
    # keep it once under <cache_dir>/behavior and copy it into each run (stages/behavior.py).
    reuse: bool = True


@dataclass
class SFTConfig:
    steps: int = 300  # optimizer steps
    base_loss: BaseLoss = BaseLoss.nll  # what the weights multiply: nll | kl (behavior.top_k > 0)
    batch_size: int = 64  # sequences per optimizer step
    micro_batch_size: int = 64  # sequences per forward/backward; batch_size must be a multiple
    # true: a micro-batch is a run of rows laid end to end within micro_batch_tokens tokens, no
    # padding, each row with its own positions and attention (pear_exp/packing.py); false: rows
    # right-padded to (micro_batch_size, longest row)
    padding_free: bool = True
    micro_batch_tokens: int = 0  # padding-free token budget (0: micro_batch_size x max_seq_len)
    lr: float = 2e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    precision: Precision = Precision.auto
    gradient_checkpointing: bool = False
    # > 0: log-probs from the last hidden states this many positions at a time, never holding
    # (batch, seq, vocab) logits (large vocabularies); 0: through the full logits.
    logprob_chunk_size: int = 0
    max_seq_len: int = 256  # longer examples are an error, not silently truncated
    log_every: int = 10
    checkpoint_every: int = 100  # optimizer steps between resumable checkpoints (0: none)
    # also keep the model after these optimizer steps (< steps): RL and evaluation run from each
    # as well, so SFT strength is a sweep axis without re-training the prefix (sft.steps in the
    # report); the learning-rate schedule is the full run's
    keep_steps: list[int] = field(default_factory=list)


@dataclass
class RLConfig:
    """GRPO from the SFT checkpoint; pear_exp/train/grpo.py states the algorithm."""

    steps: int = 100  # rollout batches, each followed by `epochs` optimizer steps
    prompts_per_step: int = 64
    group_size: int = 8  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    epochs: int = 1  # optimizer steps per rollout batch (> 1: off-policy, the clip matters)
    micro_batch_size: int = 256
    padding_free: bool = True  # micro-batches' rows run end to end (as sft.padding_free)
    lr: float = 1e-4
    warmup_steps: int = 10
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    scale_rewards: bool = True  # divide advantages by the group std (false: Dr. GRPO)
    loss_aggregation: LossAggregation = LossAggregation.token_mean
    kl_coef: float = 0.0  # k3 KL to the initial (SFT) policy; 0 skips the reference model
    tis_cap: Optional[float] = 2.0  # truncated importance weight engine -> trainer; null: off
    skip_uniform_groups: bool = True  # groups whose rewards are all equal carry no signal
    eval_every: int = 25  # held-out evaluation every N steps (0: never during RL)
    eval_problems: int = 100
    checkpoint_every: int = 20
    precision: Precision = Precision.auto
    logprob_chunk_size: int = 0  # as sft.logprob_chunk_size: > 0 for large vocabularies
    gradient_checkpointing: bool = False  # recompute activations in the update (long responses)

    def __post_init__(self) -> None:
        # The engine's log-probs under top_p < 1 are renormalised over the nucleus, never below
        # the trainer's full-distribution ones, so every TIS weight would be <= 1 (rl.py).
        if self.tis_cap is not None and self.top_p < 1.0:
            raise ConfigValueError(
                f"rl.tis_cap={self.tis_cap} with rl.top_p={self.top_p}: TIS compares the engine's "
                "nucleus-renormalised log-probs with the trainer's full-distribution ones (every "
                "weight <= 1); set rl.tis_cap=null or rl.top_p=1.0")


@dataclass
class EvalConfig:
    num_samples: int = 4  # n samples per problem for pass@k / avg@n
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    greedy: bool = True  # also report greedy accuracy


@dataclass
class DistributedConfig:
    """Multi-process training, used when torchrun (or a SLURM job with several tasks) starts
    several processes; a single process ignores it (pear_exp/train/distributed.py)."""

    strategy: ParallelStrategy = ParallelStrategy.ddp
    # How long ranks wait for each other (rank 0 samples, evaluates and writes alone meanwhile).
    timeout_minutes: int = 720


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend.wandb
    mode: WandbMode = WandbMode.auto
    project: str = "pear_exp"
    entity: Optional[str] = None
    # W&B group. null: in a sweep (--multirun) "<experiment> <sweep directory>", one group per
    # sweep, so its runs compare side by side; a single run: the experiment's name.
    group: Optional[str] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    # Shifted-task RL (`task@rl_task=NAME`): GRPO's prompts, rewards and held-out checks come
    # from this task instead of `task` (which behavior data and SFT use); evaluation covers both
    # tasks for every checkpoint. null: RL on the SFT task.
    rl_task: Optional[TaskConfig] = None
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    stages: list[Stage] = field(
        default_factory=lambda: [Stage.behavior, Stage.sft, Stage.rl, Stage.evaluate]
    )
    seed: int = 0
    run_dir: Optional[str] = None  # null: Hydra's output directory for this job
    cache_dir: str = "~/.cache/pear_exp"  # tiny models built by the framework are cached here
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # torch.use_deterministic_algorithms: bitwise-repeatable runs (and resumes) where the
    # backend supports it; on CUDA it also sets CUBLAS_WORKSPACE_CONFIG. Slower on GPUs.
    deterministic: bool = False
    experiment: Optional[str] = None  # set by +experiment presets; names the W&B group
    # Print the resolved stages, models, data sizes and a per-GPU memory estimate, then exit
    # without loading weights or creating the run directory (pear_exp/plan.py).
    plan: bool = False

    @property
    def rl_task_config(self) -> TaskConfig:
        """The task GRPO trains and checks on: rl_task when set, else the SFT task."""
        return self.task if self.rl_task is None else self.rl_task

    def __post_init__(self):
        if self.rl_task is not None and self.rl_task.name == self.task.name:
            raise ConfigValueError(
                f"rl_task.name={self.rl_task.name!r} is also task.name: the two tasks' metrics "
                "(eval/<name>/...) would overwrite each other; give rl_task a name of its own")
        bad = [k for k in self.sft.keep_steps if not 0 < k < self.sft.steps]
        if bad:
            raise ConfigValueError(f"sft.keep_steps {bad}: each must be an optimizer step "
                                   f"between 1 and sft.steps - 1 = {self.sft.steps - 1}")
        budget = self.sft.micro_batch_tokens
        if self.sft.padding_free and 0 < budget < self.sft.max_seq_len:
            raise ConfigValueError(
                f"sft.micro_batch_tokens={budget} is below sft.max_seq_len="
                f"{self.sft.max_seq_len}: a row of that length would not fit a micro-batch")
        if self.sft.base_loss == BaseLoss.kl and self.behavior.top_k < 1:
            raise ConfigValueError(
                "sft.base_loss=kl distils from the behavior policy's top-k token log-probs, "
                "which behavior.top_k=0 does not store; set behavior.top_k (e.g. 20)")
        if self.sft.base_loss == BaseLoss.kl and self.weighting.level == WeightLevel.asft:
            raise ConfigValueError(
                "weighting=asft adds its KL anchor to the NLL base loss (as its source), not to "
                "sft.base_loss=kl; choose sft.base_loss=nll or another weighting")


# Top-level keys that may change between invocations on one run directory, and that do not make
# sweep points differ: which stages to run now, where caches live, tracking, thread and process
# settings (the objective does not depend on them). Everything else defines a run's results.
OPERATIONAL_KEYS = {"stages", "run_dir", "cache_dir", "logger", "threads", "plan", "distributed"}


# The schema of each option of the task group; conf/task/*.yaml name theirs first in their
# defaults list (`- /schema/task/math@_here_`).
TASK_SCHEMAS = {TaskKind.countdown: CountdownTaskConfig, TaskKind.math: MathTaskConfig,
                TaskKind.game: GameTaskConfig}


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for kind, schema in TASK_SCHEMAS.items():
        store.store(group="schema/task", name=kind.value, node=schema)
