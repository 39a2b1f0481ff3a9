"""Run settings: one dataclass that the producer stores in Redis and every worker reads back.

Workers on other machines need only the Redis URL and the run id: everything else is here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field

from rsample.workers.backends import registry as backend_registry
from rsample.workers.backends.reward_specs import check_spec, is_verifier
from rsample.workers.common import defaults
from rsample.workers.common.errors import RsampleError

COMBINE_METHODS = ("mean", "standardized", "vote", "lexicographic")
"""How several reward models' scores combine: see `rsample.workers.stages.selection`."""


def default_combine(reward_models: tuple[str, ...]) -> str:
    """The raw score (same order, same units) with one reward model; with several, correctness first when the first
    is a verifier, else scale-free."""
    if len(reward_models) == 1:
        return "mean"
    return "lexicographic" if is_verifier(reward_models[0]) else "standardized"

DTYPES = ("auto", "float32", "bfloat16", "float16", "float", "half", "float64", "double")
"""`--dtype` values: auto (bfloat16 on CUDA, float32 on CPU), then torch's names of floating-point types."""

GENERATION_BACKENDS = tuple(backend_registry.GENERATION_BACKENDS)
REWARD_BACKENDS = tuple(backend_registry.REWARD_BACKENDS)
WORKER_ROLES = ("generate", "reward", "both")
"""`both`: one process with the policy and the reward models, serving every queue of the run (a machine without GPU)."""


TEMPLATE_CALL_ARGUMENTS = frozenset({
    "conversation", "messages", "tokenize", "add_generation_prompt", "continue_final_message", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "padding", "truncation", "max_length", "tokenizer_kwargs", "chat_template",
})
"""`apply_chat_template`'s own arguments, which template variables must not override."""


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled from the policy, by either backend alike.

    Each sampling field is resolved once, when the run is made: the command line's value, else the policy's
    generation_config.json, else the value here (`resolve_sampling`). Workers apply exactly these values.
    """

    n: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    max_prompt_tokens: int = defaults.MAX_PROMPT_TOKENS
    top_k: int = 0
    """0: no top-k cut."""
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    chat_template_kwargs: dict = field(default_factory=dict)
    """More variables for the policy's chat template when it renders a prompt (Qwen3's `enable_thinking`)."""

    def __post_init__(self) -> None:
        reserved = sorted(set(self.chat_template_kwargs) & TEMPLATE_CALL_ARGUMENTS)
        if reserved:
            raise RsampleError(f"--chat-template-kwargs may not set {', '.join(reserved)}: rsample sets how the prompt is rendered")
        if self.n < 2:
            raise RsampleError(f"--n must be at least 2 (got {self.n}): best-of-n needs two candidates per prompt")
        if self.temperature <= 0:
            raise RsampleError(f"--temperature must be > 0 (got {self.temperature}): rejection sampling needs sampling")
        if not 0 < self.top_p <= 1:
            raise RsampleError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.max_new_tokens < 1:
            raise RsampleError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if self.max_prompt_tokens < 1:
            raise RsampleError(f"--max-prompt-tokens must be at least 1 (got {self.max_prompt_tokens})")
        if self.top_k < 0:
            raise RsampleError(f"--top-k must be >= 0 (got {self.top_k}); 0 turns it off")
        if not 0 <= self.min_p < 1:
            raise RsampleError(f"--min-p must be in [0, 1) (got {self.min_p})")
        if self.repetition_penalty <= 0:
            raise RsampleError(f"--repetition-penalty must be > 0 (got {self.repetition_penalty})")


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
"""The sampling settings whose default is the policy's own (its generation_config.json, which both backends apply alike),
then rsample's."""


def resolve_sampling(explicit: dict, policy_defaults: dict, **fixed) -> tuple[SamplingConfig, dict[str, str]]:
    """Each sampling field from the command line (`explicit`, None = not given), else the policy's generation config,
    else rsample's default; returns the settings and where each sampling field came from, for the log."""
    values, sources = {}, {}
    for name in SAMPLING_FIELDS:
        if explicit.get(name) is not None:
            values[name], sources[name] = explicit[name], "command line"
        elif policy_defaults.get(name) is not None:
            values[name], sources[name] = policy_defaults[name], "policy generation_config"
        else:
            sources[name] = "rsample default"
    if "top_k" in values:
        values["top_k"] = max(0, int(values["top_k"]))  # some configs write -1 for "off"
    return SamplingConfig(**fixed, **values), sources


ADDED_LATER = ((("sampling", "chat_template_kwargs"), {}), (("reasoning_end",), None), (("data", "prompt_columns"), ()),
               (("data", "reference_column"), None), (("data", "subset"), None), (("reward_names",), ()))
"""Settings added after runs were made, with their defaults: left out of the run id at those, so that a run made
before them keeps its id (and its output files) when resumed."""

SPEED_ONLY_MODEL_SETTINGS = ("reward_micro_batch", "reward_token_budget", "reward_pass_cost", "tensor_parallel_size", "gpu_memory_utilization",
                             "enforce_eager")
"""Model settings that change how fast a run goes, not what it writes: not part of its id, so that the same command
finds its run again on another machine (`rsample run` sizes the vLLM memory share to the GPU it finds)."""


@dataclass(frozen=True)
class ModelSettings:
    """Where models run: shared by the policy and the reward models of a run."""

    dtype: str = "auto"
    """torch dtype name, or "auto" (bfloat16 on CUDA, float32 on CPU)."""
    generation_backend: str = "transformers"
    reward_backend: str = "transformers"
    reward_micro_batch: int = defaults.REWARD_MICRO_BATCH
    """Most conversations per reward forward pass."""
    reward_token_budget: int = defaults.REWARD_TOKEN_BUDGET
    """Padded tokens per reward forward pass: length-sorted conversations fill it."""
    reward_pass_cost: int = defaults.REWARD_PASS_COST
    """A reward forward pass's fixed cost in padded tokens, which the batch split weighs against padding."""
    tensor_parallel_size: int = 1
    """GPUs per vLLM engine: a generation worker is pinned to this many GPUs."""
    max_model_len: int | None = None
    """vLLM's context cap (default: the model's own); a smaller one saves KV-cache memory."""
    gpu_memory_utilization: float = defaults.VLLM_GPU_MEMORY_UTILIZATION
    """Share of each GPU's memory a vLLM engine takes (weights + KV cache)."""
    enforce_eager: bool = False
    """vLLM without torch.compile and CUDA graphs: starts in seconds instead of minutes, decodes slower."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise RsampleError(f"unknown --dtype {self.dtype!r} (use auto, float32, bfloat16 or float16)")
        if self.tensor_parallel_size < 1:
            raise RsampleError(f"--tensor-parallel-size must be at least 1 (got {self.tensor_parallel_size})")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise RsampleError(f"--max-model-len must be at least 2 (got {self.max_model_len})")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise RsampleError(f"--gpu-memory-utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.generation_backend not in GENERATION_BACKENDS:
            raise RsampleError(f"unknown generation backend {self.generation_backend!r} (choose from {', '.join(GENERATION_BACKENDS)})")
        if self.reward_backend not in REWARD_BACKENDS:
            raise RsampleError(f"unknown reward backend {self.reward_backend!r} (choose from {', '.join(REWARD_BACKENDS)})")
        if self.reward_micro_batch < 1:
            raise RsampleError(f"--reward-batch-size must be at least 1 (got {self.reward_micro_batch})")
        if self.reward_token_budget < 1:
            raise RsampleError(f"--reward-token-budget must be at least 1 (got {self.reward_token_budget})")
        if self.reward_pass_cost < 0:
            raise RsampleError(f"--reward-pass-cost must be at least 0 (got {self.reward_pass_cost})")


@dataclass(frozen=True)
class JobSettings:
    """How jobs are run and watched; they change nothing in the output, so they are not part of the run id."""

    generation_timeout: int = defaults.GENERATION_JOB_TIMEOUT
    score_timeout: int = defaults.SCORE_JOB_TIMEOUT
    retries: int = defaults.JOB_RETRIES
    heartbeat_ttl: int = defaults.JOB_HEARTBEAT_TTL
    max_in_flight: int = defaults.MAX_IN_FLIGHT

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise RsampleError(f"--retries must be >= 0 (got {self.retries})")
        if self.heartbeat_ttl < 2:
            raise RsampleError(f"--heartbeat-ttl must be at least 2 seconds (got {self.heartbeat_ttl})")
        if self.max_in_flight < 1:
            raise RsampleError(f"--max-in-flight must be at least 1 (got {self.max_in_flight})")
        if min(self.generation_timeout, self.score_timeout) < 1:
            raise RsampleError("job timeouts must be at least 1 second")


@dataclass(frozen=True)
class DataSelection:
    """Which rows of which dataset become prompts."""

    dataset: str
    split: str = "train"
    start: int = 0
    end: int | None = None
    num_prompts: int | None = None
    system_prompt: str | None = None
    prompt_columns: tuple[str, ...] = ()
    """The columns holding each row's prompt: one, a string or chat turns; several, strings joined by a blank line
    (Alpaca's `instruction` and `input`). Empty: `messages`, else `prompt`, else `conversations`."""
    reference_column: str | None = None
    """The column holding each row's reference completion; None: the final assistant turn of the prompt's chat turns."""
    subset: str | None = None
    """A Hub dataset's configuration (`datasets`' `name`: GSM8K's `main`), for datasets that have several."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_columns", tuple(self.prompt_columns))  # a list, read back from JSON
        for flag, column in (*(("--prompt-column", c) for c in self.prompt_columns), ("--reference-column", self.reference_column)):
            if column is not None and not column.strip():
                raise RsampleError(f"{flag} must name a column (got an empty name)")
        if len(set(self.prompt_columns)) != len(self.prompt_columns):
            raise RsampleError(f"--prompt-column names a column twice: {', '.join(self.prompt_columns)}")
        if self.reference_column in self.prompt_columns:
            raise RsampleError(f"--prompt-column and --reference-column both name {self.reference_column!r}: the prompt and its reference "
                               "come from different columns")
        if self.start < 0:
            raise RsampleError(f"--start must be >= 0 (got {self.start})")
        if self.end is not None and self.end <= self.start:
            raise RsampleError(f"--end ({self.end}) must be greater than --start ({self.start})")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise RsampleError(f"--num-prompts must be at least 1 (got {self.num_prompts})")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run's workers and aggregator need, stored as JSON under the run id."""

    run_id: str
    data: DataSelection
    policy: str
    reward_models: tuple[str, ...]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    models: ModelSettings = field(default_factory=ModelSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    prompts_per_job: int = defaults.PROMPTS_PER_JOB
    include_reference: bool = False
    combine: str | None = None
    """None: `default_combine` for the number of reward models, resolved here so the stored run names it."""
    min_margin: float | None = None
    keep_truncated: bool = False
    """Let a completion cut at --max-new-tokens be the chosen one, as before such completions were barred (an empty answer never is)."""
    answer_column: str = defaults.ANSWER_COLUMN
    """The dataset column holding each row's ground truth, for `verify:` rewards."""
    judge_template: str | None = None
    """The rubric `judge:` rewards fill (a Jinja template of `conversation` and `answer`); None: the one that ships."""
    extra_columns: tuple[str, ...] = ()
    """More dataset columns that travel with each prompt to the reward workers (for `fn:` rewards)."""
    trust_remote_code: tuple[str, ...] = ()
    """Models (policy, reward models, judges) whose repository code the run lets run; each worker must allow them too."""
    reasoning_end: str | None = None
    """The marker that ends a completion's reasoning (`</think>`): rewards read what follows its last occurrence, and a
    completion without it is never the chosen one (see `rsample.workers.common.reasoning`)."""
    reward_names: tuple[str, ...] = ()
    """The keys of the reward models' scores in the output (`--reward-model NAME=MODEL`), one per reward model; empty:
    the `reward_models` as given."""
    sft: bool = False
    """Also keep each prompt's best candidate for supervised fine-tuning (`--sft-out`): prompts with one distinct
    candidate are scored too."""
    command: str = ""
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.reward_models:
            raise RsampleError("at least one --reward-model is required")
        if len(set(self.reward_models)) != len(self.reward_models):
            raise RsampleError(f"--reward-model given twice: {', '.join(self.reward_models)}")
        for spec in self.reward_models:
            check_spec(spec)
        if self.reward_names and len(self.reward_names) != len(self.reward_models):
            raise RsampleError(f"{len(self.reward_names)} reward names for {len(self.reward_models)} reward models")
        twice = next((name for i, name in enumerate(self.score_names) if name in self.score_names[:i]), None)
        if twice is not None:
            raise RsampleError(f"two reward models are named {twice!r}: each one's scores need a name of their own")
        if self.combine is None:
            object.__setattr__(self, "combine", default_combine(self.reward_models))
        if self.combine not in COMBINE_METHODS:
            raise RsampleError(f"--combine must be one of {', '.join(COMBINE_METHODS)} (got {self.combine!r})")
        if self.prompts_per_job < 1:
            raise RsampleError(f"--batch-size must be at least 1 (got {self.prompts_per_job})")
        if self.min_margin is not None and self.min_margin < 0:
            raise RsampleError(f"--min-margin must be >= 0 (got {self.min_margin})")
        if self.reasoning_end is not None and not self.reasoning_end.strip():
            raise RsampleError("--reasoning-end must be a marker such as '</think>' (got an empty one)")
        if self.reasoning_end is not None and self.reasoning_end != self.reasoning_end.strip():
            raise RsampleError(f"--reasoning-end {self.reasoning_end!r} has spaces or line breaks around it, which completions need not "
                               f"have after the marker: give {self.reasoning_end.strip()!r}")

    def models_of(self, role: str) -> tuple:
        """What a worker of `role` loads for this run: its backends' `from_run` read nothing else. A worker that moves to
        a run of the same keeps its models instead of loading them again (minutes for a large model on vLLM)."""
        generation = (self.policy,)
        scoring = (self.reward_models, self.judge_template, self.answer_column)
        return (role, self.models, tuple(sorted(self.trust_remote_code)), *(generation if role != "reward" else ()),
                *(scoring if role != "generate" else ()))

    def served_reward_models(self, indices: list[int] | tuple[int, ...] | None) -> list[int]:
        """The reward models a worker serves (`--reward-model-index`, default all), checked before any is loaded."""
        if not indices:
            return list(range(len(self.reward_models)))
        for index in indices:
            if not 0 <= index < len(self.reward_models):
                count = len(self.reward_models)
                raise RsampleError(f"run {self.run_id} has {count} reward model{'s' * (count != 1)} (indices 0 to {count - 1}); "
                                   f"there is no index {index}")
        return list(indices)

    @property
    def score_names(self) -> tuple[str, ...]:
        """Each reward model's key in the output's score columns."""
        return self.reward_names or self.reward_models

    @property
    def row_columns(self) -> tuple[str, ...]:
        """The dataset columns the rewards read, which travel with each prompt to the reward workers."""
        answers = (self.answer_column,) if any(is_verifier(spec) for spec in self.reward_models) else ()
        return tuple(dict.fromkeys((*answers, *self.extra_columns)))

    @property
    def min_candidates_scored(self) -> int:
        """A prompt with fewer distinct candidates is not scored: no pair (and, without --sft-out, no row) needs it."""
        return 1 if self.sft else 2

    def output_settings(self) -> dict:
        """The settings that decide what a run writes: the same ones always give the same run id."""
        settings = dataclasses.asdict(self)
        for volatile in ("run_id", "command", "created_at", "jobs"):
            settings.pop(volatile)
        for speed_only in SPEED_ONLY_MODEL_SETTINGS:
            settings["models"].pop(speed_only)
        for path, default in ADDED_LATER:  # at its default, a setting added later leaves the id of an older run unchanged
            *parents, name = path
            holder = functools.reduce(dict.__getitem__, parents, settings)
            if holder.get(name) == default:
                holder.pop(name)
        return settings

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_output_settings(cls, run_id: str, settings: dict) -> RunConfig:
        """The run again from the settings its output files keep (`output_settings`): what it writes is the same;
        how its jobs run and how fast (left out of those settings) takes the defaults."""
        return cls.from_json(json.dumps({**settings, "run_id": run_id, "jobs": {}}))

    @classmethod
    def from_json(cls, text: str | bytes) -> RunConfig:
        raw = json.loads(text)
        return cls(
            **{
                **raw,
                "data": DataSelection(**raw["data"]),
                "sampling": SamplingConfig(**raw["sampling"]),
                "models": ModelSettings(**raw["models"]),
                "jobs": JobSettings(**raw["jobs"]),
                "reward_models": tuple(raw["reward_models"]),
                "reward_names": tuple(raw.get("reward_names", ())),
                "extra_columns": tuple(raw.get("extra_columns", ())),
                "trust_remote_code": tuple(raw.get("trust_remote_code", ())),
            }
        )
