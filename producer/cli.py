"""The `rsample` command: a thin layer over functions that the tests call directly.

    rsample run --dataset prompts.jsonl --policy POLICY --reward-model RM --n 8 --out pairs.jsonl

Heavy imports (torch, transformers) happen inside commands, after `--gpu` has pinned the device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import click
import redis
from click.core import ParameterSource

from rsample.workers.backends.reward_specs import is_function, is_verifier, split_name
from rsample.workers.common import defaults
from rsample.workers.common.config import (
    COMBINE_METHODS,
    GENERATION_BACKENDS,
    REWARD_BACKENDS,
    SAMPLING_FIELDS,
    WORKER_ROLES,
    DataSelection,
    JobSettings,
    ModelSettings,
    RunConfig,
    resolve_sampling,
)
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.runtime.connection import FULL_REDIS, REDIS_URL_ENV, redact_secrets, redact_url


def redacted_command(argv: list[str]) -> str:
    """The command as stored in the run's settings and the dataset card: no password, no token, in any form."""
    return shlex.join(["rsample", *(redact_secrets(arg) for arg in argv)])


def hide_secrets_from_ps(argv: list[str]) -> None:
    """A password given on the command line (`--redis-url URL`, `--redis-url=URL`) would show in `ps` for as long
    as the process lives: rewrite this process's title without it. (RSAMPLE_REDIS_URL never shows at all.)"""
    redacted = [redact_secrets(arg) for arg in argv]
    if redacted != argv:
        import setproctitle

        setproctitle.setproctitle(shlex.join([sys.executable, "-m", "rsample.producer", *redacted]))


class JsonObject(click.ParamType):
    """A JSON object on the command line."""

    name = "JSON"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"not valid JSON ({exc}): {value}", param, ctx)
        if not isinstance(parsed, dict):
            self.fail(f"must be a JSON object ({{...}}), got {value}", param, ctx)
        return parsed


def _check_run_id(ctx, param, value: str) -> str:
    """A run's name is part of its Redis keys and its jobs' ids: no ':' (another run's keys would begin with
    `<name>:`) and no glob characters."""
    if value and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise click.BadParameter(f"{value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def run_options(command):
    """The options that define a run, shared by `run` and `enqueue`."""
    options = [
        click.option("--dataset", required=True, help="Hub dataset id, or a local .jsonl/.json/.parquet/.csv file or folder."),
        click.option("--split", default="train", show_default=True),
        click.option("--subset", help="A Hub dataset's configuration, for datasets that have several (GSM8K's main or socratic)."),
        click.option("--num-prompts", type=int, help="Read at most this many rows (after --start)."),
        click.option("--start", type=int, default=0, show_default=True, help="First row index."),
        click.option("--end", type=int, help="Row index to stop before."),
        click.option("--system-prompt", help="System prompt prepended to every prompt (Llama 3 style steering)."),
        click.option("--prompt-column", "prompt_columns", multiple=True,
                     help="Dataset column holding each row's prompt: a string (one user turn) or chat turns (default: messages, else "
                          "prompt, else ShareGPT's conversations). Repeat to join string columns by a blank line (Alpaca's instruction, input)."),
        click.option("--reference-column", help="Dataset column holding each row's reference answer, e.g. MATH's solution "
                                                "(default: the final assistant turn of the prompt's chat turns)."),
        click.option("--policy", required=True, help="Chat model that samples completions: Hub id, folder or .gguf file."),
        click.option("--reward-model", "reward_models", multiple=True, required=True,
                     help="Sequence-classification reward model, or verify:math / verify:exact (the row's answer checked), judge:MODEL, "
                          "fn:package.module:function; NAME=... names its scores in the output (default: the value as given); "
                          "repeat for several."),
        click.option("--answer-column", default=defaults.ANSWER_COLUMN, show_default=True,
                     help="Dataset column with each row's ground truth, for verify: rewards (GSM8K's '#### 42' is understood)."),
        click.option("--extra-column", "extra_columns", multiple=True,
                     help="Another dataset column that travels with each prompt to the reward workers (for fn: rewards); repeatable."),
        click.option("--judge-template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Jinja rubric for judge: rewards, of `conversation` (the prompt's messages) and `answer` (default: a general one)."),
        click.option("--trust-remote-code", "trust_remote_code", multiple=True, metavar="MODEL",
                     help="Let this model (policy, reward model or judge) run its repository's code; repeatable. Off by default."),
        click.option("--n", type=int, default=4, show_default=True, help="Completions sampled per prompt."),
        click.option("--temperature", type=float, help="Sampling temperature (default: the policy's generation_config, else 0.7)."),
        click.option("--top-p", type=float, help="Nucleus sampling (default: the policy's generation_config, else 1.0)."),
        click.option("--top-k", type=int, help="Top-k cut, 0 for none (default: the policy's generation_config, else 0)."),
        click.option("--min-p", type=float, help="Min-p cut (default: the policy's generation_config, else 0)."),
        click.option("--repetition-penalty", type=float, help="Default: the policy's generation_config, else 1.0 (none)."),
        click.option("--max-new-tokens", type=int, default=256, show_default=True),
        click.option("--max-prompt-tokens", type=int, default=defaults.MAX_PROMPT_TOKENS, show_default=True,
                     help="Skip (and count) prompts longer than this many policy tokens."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--batch-size", type=int, default=defaults.PROMPTS_PER_JOB, show_default=True, help="Prompts per generation job."),
        click.option("--include-reference", is_flag=True, help="Score the dataset's reference completion as one more candidate."),
        click.option("--combine", type=click.Choice(COMBINE_METHODS),
                     help="How reward models' scores combine: mean (raw), standardized (z-scores per prompt, averaged), vote, "
                          "lexicographic (the first decides, the next break its ties). Default: mean with one reward model; with "
                          "several, lexicographic when the first is a verify: reward, else standardized."),
        click.option("--min-margin", type=float, help="Drop pairs whose combined score gap is smaller (in the combination's units)."),
        click.option("--sft", is_flag=True, help="Score prompts with one distinct candidate too, so that `--sft-out` (of run or aggregate) "
                                                 "keeps every prompt's best (implied by run's --sft-out)."),
        click.option("--keep-truncated", is_flag=True, help="Let a completion cut at --max-new-tokens be the chosen one (an empty one never is)."),
        click.option("--chat-template-kwargs", type=JsonObject(), default="{}",
                     help="JSON object of more variables for the policy's chat template, e.g. '{\"enable_thinking\": false}' (Qwen3)."),
        click.option("--reasoning-end", metavar="MARKER",
                     help="For a reasoning policy: the marker that ends its thinking (e.g. '</think>'). Rewards read what follows it; "
                          "a completion without it is never the chosen one; the output keeps the whole completion."),
        click.option("--dtype", default="auto", show_default=True, help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
        click.option("--backend", type=click.Choice(GENERATION_BACKENDS), default="transformers", show_default=True, help="Generation backend (vllm: pip install 'rsample[vllm]'; echo: zero-cost, for benchmarks)."),
        click.option("--reward-backend", type=click.Choice(REWARD_BACKENDS), default="transformers", show_default=True, help="Reward backend (vllm: pooling runner; length: zero-cost, for benchmarks)."),
        click.option("--tensor-parallel-size", type=int, default=1, show_default=True, help="vLLM: GPUs per engine (a generation worker is pinned to that many)."),
        click.option("--max-model-len", type=int, help="Context cap of every model of the run, on either backend (default: the model's); "
                                                     "smaller saves vLLM's KV-cache memory."),
        click.option("--gpu-memory-utilization", type=float,
                     help="vLLM: share of each GPU's memory an engine takes (default 0.9; `rsample run` on one GPU: what its reward models leave)."),
        click.option("--enforce-eager", is_flag=True, help="vLLM: no torch.compile, no CUDA graphs (starts in seconds, decodes slower)."),
        click.option("--reward-batch-size", type=int, default=defaults.REWARD_MICRO_BATCH, show_default=True, help="Most conversations per reward forward pass."),
        click.option("--reward-token-budget", type=int, default=defaults.REWARD_TOKEN_BUDGET, show_default=True,
                     help="Padded tokens per reward forward pass (length-sorted conversations fill it; halved on out-of-memory)."),
        click.option("--reward-pass-cost", type=int, default=defaults.REWARD_PASS_COST, show_default=True,
                     help="A reward forward pass's fixed cost in padded tokens: higher, fewer and fuller batches; lower, less padding."),
        click.option("--run-id", default="", callback=_check_run_id,
                     help="Name the run: letters, digits, '.', '_', '-' (default: a hash of its settings)."),
        click.option("--max-in-flight", type=int, default=defaults.MAX_IN_FLIGHT, show_default=True, help="Prompts handed to workers and not yet written: bounds Redis memory."),
        click.option("--retries", type=int, default=defaults.JOB_RETRIES, show_default=True, help="Retries of a failed job; then a generation job of several prompts is split in two halves, each "
                   "with these retries again, and a job that still fails has its prompts skipped."),
        click.option("--heartbeat-ttl", type=int, default=defaults.JOB_HEARTBEAT_TTL, show_default=True, help="Seconds after which a silent worker's job is requeued."),
        click.option("--generation-timeout", type=int, default=defaults.GENERATION_JOB_TIMEOUT, show_default=True, help="Seconds a generation job may run."),
        click.option("--score-timeout", type=int, default=defaults.SCORE_JOB_TIMEOUT, show_default=True, help="Seconds a scoring job may run."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def answer_column_for_functions(params: dict) -> tuple[str, ...]:
    """`--answer-column`, given with `fn:` rewards and no verifier, travels to the functions as the README says (verifiers
    carry it themselves); its default does not, so that a dataset without an `answer` column runs `fn:` rewards."""
    context = click.get_current_context(silent=True)
    given = context is not None and context.get_parameter_source("answer_column") not in (None, ParameterSource.DEFAULT)
    specs = [split_name(value)[1] for value in params["reward_models"]]
    if given and any(is_function(spec) for spec in specs) and not any(is_verifier(spec) for spec in specs):
        return (params["answer_column"],)
    return ()


def build_config(params: dict) -> RunConfig:
    """The run's settings from the command line; the policy's sampling defaults fill the sampling flags not given."""
    plain_sampling = {name: params[name] for name in ("n", "max_new_tokens", "seed", "max_prompt_tokens", "chat_template_kwargs")}
    named_rewards = [split_name(value) for value in params["reward_models"]]
    config = RunConfig(
        run_id=params["run_id"],
        data=DataSelection(params["dataset"], params["split"], params["start"], params["end"], params["num_prompts"], params["system_prompt"],
                           tuple(params["prompt_columns"]), params["reference_column"], params["subset"]),
        policy=params["policy"],
        reward_models=tuple(spec for _, spec in named_rewards),
        reward_names=tuple(name or spec for name, spec in named_rewards) if any(name for name, _ in named_rewards) else (),
        sampling=resolve_sampling({name: params[name] for name in SAMPLING_FIELDS}, {}, **plain_sampling)[0],
        models=ModelSettings(
            dtype=params["dtype"], generation_backend=params["backend"], reward_backend=params["reward_backend"],
            reward_micro_batch=params["reward_batch_size"], reward_token_budget=params["reward_token_budget"],
            reward_pass_cost=params["reward_pass_cost"],
            tensor_parallel_size=params["tensor_parallel_size"], max_model_len=params["max_model_len"],
            gpu_memory_utilization=params["gpu_memory_utilization"] or defaults.VLLM_GPU_MEMORY_UTILIZATION,
            enforce_eager=params["enforce_eager"],
        ),
        jobs=JobSettings(params["generation_timeout"], params["score_timeout"], params["retries"], params["heartbeat_ttl"], params["max_in_flight"]),
        prompts_per_job=params["batch_size"],
        include_reference=params["include_reference"],
        combine=params["combine"],
        min_margin=params["min_margin"],
        keep_truncated=params["keep_truncated"],
        reasoning_end=params["reasoning_end"],
        answer_column=params["answer_column"],
        judge_template=params["judge_template"].read_text() if params["judge_template"] else None,
        extra_columns=tuple(params["extra_columns"]) + answer_column_for_functions(params),
        trust_remote_code=tuple(params["trust_remote_code"]),
        sft=params["sft"] or params.get("sft_out") is not None,
        command=redacted_command(sys.argv[1:]),
    )
    from rsample.workers.backends.models import (
        check_judge_model,
        check_policy,
        check_reward_model,
        policy_sampling_defaults,
    )
    from rsample.workers.backends.registry import ZERO_COST_GENERATION, ZERO_COST_REWARD
    from rsample.workers.backends.reward_specs import is_function, is_judge, is_verifier, model_path, same_model

    models = [config.policy, *(path for spec in config.reward_models if (path := model_path(spec)) is not None)]
    spelled = []
    for given in config.trust_remote_code:  # held as the run spells the model, which is what workers compare
        match = next((model for model in models if same_model(model, given)), None)
        if match is None:  # a typo would leave the model it meant untrusted, and let nothing run
            raise RsampleError(f"--trust-remote-code {given} names no model of this run (its models: {', '.join(models)})")
        spelled.append(match)
    config = dataclasses.replace(config, trust_remote_code=tuple(dict.fromkeys(spelled)))
    trusted = set(config.trust_remote_code)
    if config.models.tensor_parallel_size > 1 and "vllm" not in (config.models.generation_backend, config.models.reward_backend):
        raise RsampleError(f"--tensor-parallel-size {config.models.tensor_parallel_size} applies to vLLM engines (--backend vllm, "
                           "--reward-backend vllm): the other backends run a worker's model on one device")
    if config.models.generation_backend != ZERO_COST_GENERATION:
        check_policy(config.policy, config.policy in trusted, config.reasoning_end, config.sampling.chat_template_kwargs,
                     config.sampling.max_new_tokens, config.models.max_model_len)
        sampling, sources = resolve_sampling({name: params[name] for name in SAMPLING_FIELDS}, policy_sampling_defaults(config.policy),
                                             **plain_sampling)
        config = dataclasses.replace(config, sampling=sampling)
        logging.getLogger(__name__).info(
            "sampling: %s", ", ".join(f"{name}={getattr(sampling, name)} ({sources[name]})" for name in SAMPLING_FIELDS))
    for spec in config.reward_models:
        if is_judge(spec):
            from rsample.workers.backends.judge import compile_template

            compile_template(config.judge_template)
            check_judge_model(spec, model_path(spec) in trusted)
        elif not (is_verifier(spec) or is_function(spec)) and config.models.reward_backend != ZERO_COST_REWARD:
            check_reward_model(spec, spec in trusted)
    return config


def redis_url_option(required: bool):
    return click.option(
        "--redis-url", envvar=REDIS_URL_ENV, required=required, show_envvar=True,
        help="Redis shared by every process of the run (redis://, rediss:// for TLS; password in the URL).",
    )


allow_reward_fn_option = click.option(
    "--allow-reward-fn", "allow_functions", multiple=True, metavar="MODULE:FUNCTION",
    help="Let this worker import this fn: reward (repeat for several); installed `rsample.rewards` entry points are allowed too. "
         "A run's settings alone never make a worker import code.",
)

worker_trust_option = click.option(
    "--trust-remote-code", "trust_remote_code", multiple=True, metavar="MODEL",
    help="Let this worker run this model's repository code, if the run names it too (repeat for several).",
)

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace output files that exist and are not this run's (by default rsample refuses; a run's own files are resumed).",
)
retry_failed_option = click.option(
    "--retry-failed", is_flag=True,
    help="Resuming: produce again the rows skipped because their work failed (an error, a timeout, a worker that kept "
         "dying); rows skipped for their content stay skipped.",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, systemd, Kubernetes): stops a command as Ctrl-C does, its lock released and its workers
    stopped, instead of killing it where it stands (its run then waited out its lock, and `status` said it ran)."""


def _terminated(signum, frame) -> None:
    raise Terminated()


class RsampleGroup(click.Group):
    """Prints RsampleError, and an OSError about a path, as one line and exits 2, instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: what is written stays, and says how to go on
            if ctx.invoked_subcommand in ("run", "aggregate", "resume"):
                click.echo(f"interrupted: the rows written so far are kept; the same `rsample {ctx.invoked_subcommand}` command "
                           "resumes the run", err=True)
            else:
                click.echo("interrupted", err=True)
            sys.exit(128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT))
        except RsampleError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except redis.exceptions.OutOfMemoryError:  # a command that does not wait for Redis (enqueue, status)
            click.echo(f"error: Redis refused a write: {FULL_REDIS}", err=True)
            sys.exit(2)
        except OSError as exc:  # a path the system refuses (a folder not writable, a file where a folder must be): no traceback
            if exc.filename is None:
                raise
            click.echo(f"error: {exc.strerror or exc}: {exc.filename}", err=True)
            sys.exit(2)


def _version(context: click.Context, _parameter: click.Parameter, asked: bool) -> None:
    """The package's version, and a digest of its Python files: the version alone names no commit (a checkout of main,
    an edited copy), and the README asks for the same code on every machine of a run."""
    if not asked or context.resilient_parsing:
        return
    import hashlib
    from importlib.metadata import version

    import rsample.producer
    import rsample.workers

    digest = hashlib.sha256()
    for package in (rsample.producer, rsample.workers):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{package.__name__}/{path.relative_to(root).as_posix()}\n".encode())
            digest.update(path.read_bytes())
    click.echo(f"rsample {version('rsample')} (code {digest.hexdigest()[:12]})")
    context.exit()


@click.group(cls=RsampleGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version, and a digest of the code: machines of one run must show the same.")
def main(verbose: bool) -> None:
    """Rejection sampling (best-of-n) on Redis + RQ: sample, score, keep the best and the worst."""
    hide_secrets_from_ps(sys.argv[1:])
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # commands with handlers of their own (workers) install them later
        signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


OUT_OPTION = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSONL of chosen/rejected pairs.")
SCORES_OUT_OPTION = click.option("--scores-out", type=click.Path(dir_okay=False, path_type=Path), help="JSONL with every scored candidate.")
SFT_OUT_OPTION = click.option(
    "--sft-out", type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL with each prompt's best candidate as an SFT example (messages = prompt + best completion, with its scores).")
GENERATE_WORKERS_OPTION = click.option("--generate-workers", type=click.IntRange(min=1), default=1, show_default=True,
                                       help="Generation worker processes to start.")
PUSH_OPTION = click.option("--push-to-hub", "push_repo", help="Hub dataset repo to upload the results to (token from HF_TOKEN).")
PUBLIC_OPTION = click.option("--public", is_flag=True, help="Make the Hub dataset public (default: private).")
NO_PROGRESS_OPTION = click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
PARQUET_OPTION = click.option(
    "--parquet", is_flag=True,
    help="Also write each output as Parquet beside it (pairs.parquet, ...) with its columns' types, for readers that infer "
         "them from a JSONL file's first rows (open-instruct, several files at once); see `rsample parquet`.")
"""Options that `run`, `aggregate` and `resume` share: one definition, one help text."""


@main.command()
@run_options
@redis_url_option(required=False)
@OUT_OPTION
@SCORES_OUT_OPTION
@SFT_OUT_OPTION
@GENERATE_WORKERS_OPTION
@PUSH_OPTION
@PUBLIC_OPTION
@NO_PROGRESS_OPTION
@PARQUET_OPTION
@overwrite_option
@retry_failed_option
def run(out, scores_out, sft_out, generate_workers, push_repo, public, no_progress, parquet, overwrite, retry_failed, redis_url,
        **params) -> None:
    """Run the whole job on this machine (embedded Redis unless --redis-url) and exit when it is done.

    Re-running the same command after a crash resumes: rows already in the output are not generated again.
    """
    from rsample.producer.driver.local_run import LocalRunOptions, run_locally, share_the_gpu

    check_push_options(push_repo, public)
    config = share_the_gpu(build_config({**params, "sft_out": sft_out}), explicit_share=params["gpu_memory_utilization"] is not None)
    options = LocalRunOptions(out=out, scores_out=scores_out, sft_out=sft_out, redis_url=redis_url, generate_workers=generate_workers,
                              progress=not no_progress, overwrite=overwrite, allow_functions=functions_named(config),
                              trust_remote_code=config.trust_remote_code, retry_failed=retry_failed, parquet=parquet)
    config, summary = run_locally(config, options)
    _report(config, summary, out, scores_out, push_repo, public, sft_out, parquet)


@main.command()
@run_options
@redis_url_option(required=True)
def enqueue(redis_url, **params) -> None:
    """Register a run in a shared Redis (or find it again) and print its id.

    Prompts are fed to the workers, a bounded window at a time, by `rsample aggregate`.
    """
    from rsample.producer.registration import register_run
    from rsample.workers.runtime.connection import connect

    config = build_config(params)  # the settings' errors first: they need no Redis
    relative = [f"{flag} {value}" for flag, value in (("--dataset", config.data.dataset), ("--policy", config.policy),
                                                     *(("--reward-model", spec) for spec in config.reward_models))
                if value.startswith(("./", "../")) or (not Path(value).is_absolute() and Path(value).exists())]
    if relative:  # stored as given: every worker and the coordinator resolve it from their own folder
        click.secho(f"WARNING relative local path{'s' * (len(relative) > 1)} ({', '.join(relative)}): every worker and "
                    "`rsample aggregate` will look for it from the folder it runs in; give absolute paths for a shared run",
                    fg="yellow", err=True)
    config, existed = register_run(connect(redis_url, patient=False), config)
    if existed:
        click.echo(f"run {config.run_id} already exists in this Redis: workers and `rsample aggregate` resume it", err=True)
    click.echo(config.run_id)


@main.command()
@click.argument("role", type=click.Choice(WORKER_ROLES))
@redis_url_option(required=True)
@click.option("--run", "run_id", help="Run to serve (default: the latest unfinished run in this Redis).")
@click.option("--gpu", help="Pin this worker to these GPU ids (sets CUDA_VISIBLE_DEVICES), e.g. 0 or 0,1.")
@click.option("--reward-model-index", "indices", type=int, multiple=True, help="Reward worker: serve only these reward models (0-based; default all).")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("--slots", type=int, help="Jobs run at once on the loaded model (default: 2 for vLLM generation, "
                                         f"{defaults.REWARD_SLOTS_ON_GPU} for a transformers reward worker on a GPU, else 1).")
@click.option("--follow", is_flag=True, hidden=True, help="With --run: then move with the runs, to runs of the same models "
                                                           "(the workers `rsample workers` starts).")
@click.option("--wait-for-redis", "wait_for_redis", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Seconds to wait at the start for a Redis that cannot be reached yet (a container started before it).")
@click.option("--stop-timeout", "stop_timeout", type=click.FloatRange(min=0), envvar="RSAMPLE_STOP_TIMEOUT", show_envvar=True,
              help="Seconds a stop signal waits for the running jobs before it releases them, unspent, and exits: set it "
                   "under the grace period of whatever stops the worker (Docker's stop_grace_period, Kubernetes' "
                   "terminationGracePeriodSeconds), whose SIGKILL would cost each job a retry. Default: wait for them.")
@allow_reward_fn_option
@worker_trust_option
def worker(role, redis_url, run_id, gpu, indices, burst, slots, follow, wait_for_redis, stop_timeout, allow_functions,
           trust_remote_code) -> None:
    """Start a long-lived worker: loads its model(s) once, then serves the run's jobs (without --run, the runs in turn:
    the next one with the models it holds, else it exits to be started again for the next run's)."""
    from rsample.workers.runtime.worker import serve

    serve(role, redis_url, run_id, gpu, list(indices) or None, burst, slots, allow_functions, trust_remote_code, follow, wait_for_redis,
          stop_timeout)


@main.command()
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scores", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The run's --scores-out file: candidates' scores, length correlation, agreement, truncation.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Where report.md and its figures go (default: beside PAIRS).")
@click.option("--reasoning-end", metavar="MARKER", help="The run's --reasoning-end: lengths are the answers', and unended thinking is counted.")
def report(pairs, scores, out_dir, reasoning_end) -> None:
    """Show what a run's data looks like: margins, length bias, agreement, diversity, truncation (report.md + PNGs)."""
    from rsample.producer.report.document import write_report

    result = write_report(pairs, scores, out_dir or default_report_dir(pairs), reasoning_end)
    click.echo("\n".join(result.lines))
    _echo_report(result)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def parquet(files) -> None:
    """Write rsample JSONL outputs (pairs, scores or sft) as Parquet beside them, with their columns' types declared.

    For files written without --parquet: each is typed from its first row (its kind and its score columns).
    """
    from rsample.producer.parquet import write_parquet

    for path in files:
        click.echo(f"wrote {write_parquet(path)}")


@main.command()
@redis_url_option(required=True)
@click.option("--run", "run_id", help="Run to aggregate (default: the run whose output --out holds, else the latest unfinished run).")
@OUT_OPTION
@SCORES_OUT_OPTION
@SFT_OUT_OPTION
@PUSH_OPTION
@PUBLIC_OPTION
@NO_PROGRESS_OPTION
@PARQUET_OPTION
@overwrite_option
@retry_failed_option
@click.option("--wait-for-redis", "wait_for_redis", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Seconds to wait at the start for a Redis that cannot be reached yet (restarting, or a container started "
                   "before it); once started, it waits through any outage.")
def aggregate(redis_url, run_id, out, scores_out, sft_out, push_repo, public, no_progress, parquet, overwrite, retry_failed,
              wait_for_redis) -> None:
    """Coordinate a run: feed its prompts to the workers and write the results; exits when every row is written.

    Run it where the dataset and the output live. Restarting it resumes from the output files.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from rsample.producer.driver.coordinator import Coordinator
    from rsample.producer.driver.ledger import check_outputs
    from rsample.producer.registration import dataset_files, load_or_recreate
    from rsample.workers.runtime.connection import connect
    from rsample.workers.runtime.progress import StageBars
    from rsample.workers.runtime.run_state import expire_run

    check_push_options(push_repo, public)
    client = connect(redis_url, wait_seconds=wait_for_redis)
    config = load_or_recreate(client, run_id, out, overwrite)
    check_sft_out(config, sft_out)
    check_outputs(config.run_id, out, scores_out, dataset_files(config), overwrite, sft_out, config.output_settings(), parquet,
                  drop_copies=True)
    coordinator = Coordinator(client, config, out, scores_out, overwrite, sft_out, retry_failed)
    try:  # from here: a SIGTERM before `run` (while the bars start) left the run's lock held until it lapsed
        bars = StageBars(client, config.run_id, disable=no_progress)
        try:
            with logging_redirect_tqdm():
                coordinator.run(on_progress=bars.update)
            bars.update()
        finally:
            bars.close()
    finally:
        coordinator.close()
    summary = coordinator.summary()
    expire_run(client, config.run_id)
    _report(config, summary, out, scores_out, push_repo, public, sft_out, parquet)


@main.command()
@redis_url_option(required=True)
@click.option("--run", "run_id", required=True, help="Run to resume.")
@OUT_OPTION
@SCORES_OUT_OPTION
@SFT_OUT_OPTION
@GENERATE_WORKERS_OPTION
@NO_PROGRESS_OPTION
@PARQUET_OPTION
@allow_reward_fn_option
@worker_trust_option
@overwrite_option
@retry_failed_option
def resume(redis_url, run_id, out, scores_out, sft_out, generate_workers, no_progress, parquet, allow_functions, trust_remote_code,
           overwrite, retry_failed) -> None:
    """Resume a run kept in Redis on this machine, with local workers (like `run` with its settings)."""
    from rsample.producer.driver.local_run import LocalRunOptions, run_locally
    from rsample.producer.registration import load_or_recreate
    from rsample.workers.runtime.connection import connect

    config = load_or_recreate(connect(redis_url, patient=False), run_id, out)
    check_sft_out(config, sft_out)
    check_functions_allowed(config, allow_functions)
    options = LocalRunOptions(out=out, scores_out=scores_out, sft_out=sft_out, redis_url=redis_url, generate_workers=generate_workers,
                              progress=not no_progress, overwrite=overwrite, allow_functions=allow_functions,
                              trust_remote_code=trust_remote_code, retry_failed=retry_failed, parquet=parquet)
    config, summary = run_locally(config, options)
    _report(config, summary, out, scores_out, None, False, sft_out, parquet)


def functions_named(config) -> tuple[str, ...]:
    """The `fn:` rewards this command line names: `rsample run` lets the workers it starts import them."""
    from rsample.workers.backends.reward_specs import function_name, is_function

    return tuple(function_name(spec) for spec in config.reward_models if is_function(spec))


def check_functions_allowed(config, allow_functions: tuple[str, ...]) -> None:
    """`resume` starts every worker of the run itself: one whose `fn:` reward none of them may import would generate
    every row and then write each as skipped. The run's settings come from Redis, which cannot allow code itself."""
    from rsample.workers.backends.functions import allowed_functions

    refused = [name for name in functions_named(config) if name not in allowed_functions(allow_functions)]
    if refused:
        raise RsampleError(f"run {config.run_id} scores with {', '.join(f'fn:{name}' for name in refused)}, which the workers this "
                           f"command starts may not import: name it with {' '.join(f'--allow-reward-fn {name}' for name in refused)}")


def check_sft_out(config, sft_out: Path | None) -> None:
    if sft_out is not None and not config.sft:
        raise RsampleError(f"run {config.run_id} was made without --sft: its prompts with one distinct candidate were not scored, "
                           "so --sft-out would miss them; enqueue the run with --sft")


def check_push_options(push_repo: str | None, public: bool) -> None:
    """Before the run, not after hours of it: a push that cannot happen."""
    if public and not push_repo:
        raise RsampleError("--public applies to --push-to-hub, which is not given")
    if push_repo:
        from huggingface_hub import constants, get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(push_repo)
        except HFValidationError as exc:
            raise RsampleError(f"--push-to-hub {push_repo!r} is no Hub repository id: {first_line(exc)}") from None

        if constants.HF_HUB_OFFLINE:
            raise RsampleError(f"--push-to-hub {push_repo}: the Hub is switched off here (HF_HUB_OFFLINE is set); leave the flag out "
                               "and push later with the same command and the flag, which generates nothing again")
        if get_token() is None:
            raise RsampleError(f"--push-to-hub {push_repo} needs a Hugging Face token that may write: set HF_TOKEN or run `hf auth login`")


def default_report_dir(pairs: Path) -> Path:
    return pairs.parent / f"{pairs.stem}.report"


def _write_run_report(out: Path, scores_out: Path | None, reasoning_end: str | None = None):
    """The run report beside the output; a report that fails says so and leaves the run's own result alone."""
    from rsample.producer.report.document import write_report

    try:
        result = write_report(out, scores_out or _recorded_scores(out), default_report_dir(out), reasoning_end)
    except Exception as exc:
        click.secho(f"WARNING no run report: {first_line(exc)} (try `rsample report {out}`)", fg="yellow", err=True)
        return None
    _echo_report(result)
    return result


def _recorded_scores(out: Path) -> Path | None:
    """The scores file the run's outcomes file records, where this session names none (a finished run aggregated again
    without --scores-out): its report lost the figures and numbers that need the scores."""
    from rsample.producer.driver.ledger import outcomes_path_for, replay_outcomes

    outcomes = outcomes_path_for(out)
    try:
        recorded = replay_outcomes(outcomes).known_paths.get("scores") if outcomes.is_file() else None
    except (OSError, ValueError):
        return None
    path = outcomes.parent / recorded if recorded else None
    return path if path is not None and path.is_file() else None


def _echo_report(result) -> None:
    for warning in result.warnings:
        click.secho(f"WARNING {warning}", fg="yellow", err=True)
    click.echo(f"report: {result.markdown} ({len(result.figures)} figures)")


def _report(config, summary, out, scores_out, push_repo, public, sft_out=None, parquet=False) -> None:
    from rsample.producer.driver.ledger import outcomes_path_for
    from rsample.producer.parquet import drop_stale_copies, write_parquet

    files = {"pairs": out, **({"scores": scores_out} if scores_out else {}), **({"sft": sft_out} if sft_out else {})}
    click.echo(f"run {config.run_id}: wrote {', '.join([*map(str, files.values()), str(outcomes_path_for(out))])}")
    for line in summary.lines():
        click.echo(line)
    report = _write_run_report(out, scores_out, config.reasoning_end)
    if parquet:  # before a push that may fail; their own trouble stops nothing. Typed from the run's settings: an empty file too
        try:
            click.echo(f"wrote {', '.join(str(write_parquet(path, kind, config.score_names)) for kind, path in files.items())}")
        except RsampleError as exc:
            click.secho(f"WARNING no Parquet copies: {exc} (try `rsample parquet`)", fg="yellow", err=True)
    else:
        from rsample.producer.registration import dataset_files

        drop_stale_copies(files.values(), dataset_files(config))
    if push_repo:
        from rsample.producer.driver.hub import push_to_hub

        click.echo(f"pushed to {push_to_hub(push_repo, config, summary, files, private=not public, report=report)}")


@main.command()
@redis_url_option(required=True)
@click.option("--run", "run_id", required=True, help="The run to take out of this Redis.")
def forget(redis_url, run_id) -> None:
    """Take a run out of a Redis (settings, counters, queues, jobs): workers that follow the runs go elsewhere.

    For a run enqueued by mistake, or one no worker can serve. Its output files are kept, and with them its settings:
    the same `rsample aggregate` command makes the run again. Refused while a coordinator or a worker is at work on it.
    """
    from rsample.producer.registration import forget_run
    from rsample.workers.runtime.connection import connect

    removed = forget_run(connect(redis_url, patient=False), run_id)
    click.echo(f"run {run_id} is gone from this Redis ({removed} keys)")


@main.command()
@redis_url_option(required=True)
@click.option("--run", "run_id", help="One run (default: every run in this Redis).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(redis_url, run_id, as_json) -> None:
    """Per-stage counts and rates of the runs in a Redis, with queue and worker counts."""
    from rsample.workers.runtime.connection import connect, memory_line
    from rsample.workers.runtime.run_state import list_run_ids
    from rsample.workers.runtime.status import run_status

    client = connect(redis_url, patient=False)

    run_ids = [run_id] if run_id else list_run_ids(client)
    if not run_ids:
        click.echo("[]" if as_json else f"no runs in {redact_url(redis_url)}")  # JSON either way for `| jq`
        return
    reports = [run_status(client, rid) for rid in run_ids]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        brief = [report for report in reports if report.complete and not run_id]
        for report in reports:
            click.echo(report.finished_line() if report in brief else "\n".join(report.lines()))
        if brief:
            click.echo(f"({len(brief)} finished run{'s' * (len(brief) > 1)} in a line each: `--run ID` gives one in full)")
        if (memory := memory_line(client)) is not None:
            click.echo(memory)


@main.command()
@redis_url_option(required=True)
@click.option("--port", type=int, default=9181, show_default=True)
@click.option("--bind", default="127.0.0.1", show_default=True)
def dashboard(redis_url, port, bind) -> None:
    """Serve rq-dashboard on the run's Redis, with the JSON serializer its job pages need, until Ctrl-C / SIGTERM."""
    from rsample.workers.runtime.connection import connect
    from rsample.workers.runtime.dashboard import serve_dashboard

    connect(redis_url, patient=False)
    import socket

    from werkzeug.serving import get_sockaddr, select_address_family

    family = select_address_family(bind, port)  # as the server binds: IPv6 for '::', and reusing a port left in TIME_WAIT
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a port in use would fail after the line below announced it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(get_sockaddr(bind, port, family))
        except OSError as exc:
            raise RsampleError(f"cannot serve the dashboard on {bind}:{port}: {exc.strerror or exc} (--port picks another)") from None
    click.echo(f"rq-dashboard on http://{bind}:{port} for {redact_url(redis_url)}")
    serve_dashboard(redis_url, bind, port)


@main.command("workers")
@redis_url_option(required=True)
@click.option("--run", "run_id", help="Serve this run only (default: follow the runs: wait for one, serve the newest fed run "
              "until it is finished, then the next).")
@click.option("--gpus", help="GPUs for workers of --role: 0,1,2 or 0-3 or 0-3,6.")
@click.option("--role", type=click.Choice(WORKER_ROLES), help="Role of the workers on --gpus.")
@click.option("--generate", "generate_gpus", help="GPUs for generation workers, e.g. 0-5 (with --reward for the others).")
@click.option("--reward", "reward_gpus", help="GPUs for reward workers, one worker per GPU, e.g. 6-7.")
@click.option("--gpus-per-worker", type=int, help="GPUs per generation worker (default: the run's --tensor-parallel-size).")
@click.option("--reward-model-index", "indices", type=int, multiple=True, help="Reward workers serve only these reward models (0-based; default all).")
@click.option("--slots", type=int, help="Generation workers: jobs run at once on the loaded model (default: the worker's).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".rsample-logs/workers"), show_default=True,
              help="Each worker's output goes to a file here, under the run id.")
@click.option("--restart-backoff", type=click.FloatRange(min=0), default=defaults.RESTART_BACKOFF, show_default=True,
              help=f"Seconds before restarting a dead worker; doubles with each quick failure in a row (at most {defaults.RESTART_BACKOFF_CAP:g} s).")
@click.option("--give-up-after", type=click.IntRange(min=1), default=defaults.GIVE_UP_AFTER, show_default=True,
              help=f"Stop restarting a worker that failed this many times in a row within {defaults.QUICK_FAILURE_SECONDS:g} s of starting.")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=defaults.STOP_GRACE_SECONDS, show_default=True,
              help="Seconds workers get to finish their current job after Ctrl-C / SIGTERM, before a second SIGTERM (on which they "
                   "release their jobs and exit; SIGKILL only if they are still there).")
@allow_reward_fn_option
@worker_trust_option
def workers(redis_url, run_id, gpus, role, generate_gpus, reward_gpus, gpus_per_worker, indices, slots, log_dir,
            restart_backoff, give_up_after, stop_timeout, allow_functions, trust_remote_code) -> None:
    """Start one pinned worker per GPU (or GPU group), restart any that dies, stop them all on Ctrl-C / SIGTERM."""
    from rsample.workers.runtime.supervisor import assign_gpus, supervise

    trusted = [arg for model in trust_remote_code for arg in ("--trust-remote-code", model)]
    allowed = [*trusted, *(arg for name in allow_functions for arg in ("--allow-reward-fn", name))]
    role_args = {
        "generate": [*(["--slots", str(slots)] if slots is not None else []), *trusted],
        "reward": [*(arg for index in indices for arg in ("--reward-model-index", str(index))), *allowed],
        "both": allowed,
    }
    assignment = assign_gpus(gpus, role, generate_gpus, reward_gpus)
    sys.exit(supervise(redis_url, run_id, assignment, gpus_per_worker, role_args, log_dir, restart_backoff, give_up_after, stop_timeout,
                       indices))


@main.command("make-tiny-models")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def make_tiny_models(directory: Path) -> None:
    """Build a random-weight policy and reward model (smoke tests only: their output is noise)."""
    from rsample.workers.backends.tiny_models import build_policy, build_reward_model

    started = time.perf_counter()
    click.echo(build_policy(directory / "policy"))
    click.echo(build_reward_model(directory / "reward", max_position_embeddings=2048))
    click.echo(f"built in {time.perf_counter() - started:.1f} s", err=True)


if __name__ == "__main__":
    main()
