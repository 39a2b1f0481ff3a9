"""Registering a run: its settings stored under an id derived from them."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import redis

from rsample.producer.dataset import count_rows, iter_rows, missing_columns
from rsample.producer.prompts import AUTO_PROMPT_COLUMNS, RowSkip, record_of
from rsample.workers.backends.reward_specs import is_verifier
from rsample.workers.backends.verifiers import ground_truth_problem
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.common.messages import PromptRecord
from rsample.workers.runtime.keys import RUNS_INDEX, RunKeys
from rsample.workers.runtime.run_state import load_run, save_run

log = logging.getLogger(__name__)


def run_id_for(config: RunConfig) -> str:
    """Same output settings, same id: re-running a command finds its run (and its output files) again."""
    return hashlib.sha256(json.dumps(config.output_settings(), sort_keys=True).encode()).hexdigest()[:12]


def dataset_files(config: RunConfig) -> tuple[Path, ...]:
    """The local files the run reads, which no output may overwrite (a Hub dataset has none); a folder's own path
    too, since no output may go inside it."""
    path = Path(config.data.dataset).expanduser()
    if path.is_dir():
        return (path, *(p for p in path.rglob("*") if p.is_file()))
    return (path,) if path.exists() else ()


PROMPT_LIKE_COLUMNS = ("question", "problem", "instruction", "query", "input", "text")
"""Columns that hold the prompt in common datasets of other shapes (GSM8K, MATH, Alpaca): named in the refusal."""


def check_columns(config: RunConfig) -> None:
    """A column the run reads that the dataset lacks (a typo, a dataset of another shape) is refused before any
    sampling, instead of skipping every row hours later."""
    data = config.data
    named = [("--prompt-column", column) for column in data.prompt_columns]
    named += [("--reference-column", data.reference_column)] if data.reference_column is not None else []
    named += [("--answer-column" if column == config.answer_column else "--extra-column", column) for column in config.row_columns]
    auto = () if data.prompt_columns else AUTO_PROMPT_COLUMNS
    missing, present = missing_columns(data, (*auto, *(column for _, column in named)))
    if not present:  # no row to judge the columns by (none is a JSON object): `check_rows` says what the first one is
        return
    columns = ", ".join(present)
    if auto and all(column in missing for column in auto):
        guess = next((column for column in PROMPT_LIKE_COLUMNS if column in present), None)
        hint = f" (--prompt-column {guess}?)" if guess else ""
        raise RsampleError(f"dataset {data.dataset!r} has no messages, prompt or conversations column (its columns: {columns}): "
                           f"name the prompt's column with --prompt-column{hint}")
    for flag, column in named:
        if column in missing:
            raise RsampleError(f"{flag} {column!r} is not a column of dataset {data.dataset!r} (its columns: {columns})")


ROWS_CHECKED = 1000
"""Rows read when a run is made to prove that its dataset gives prompts (and references, where the run wants them)."""


def check_rows(config: RunConfig) -> None:
    """A dataset none of whose first rows gives a prompt (a column of another type than the settings expect) or, for
    --include-reference, a reference, is refused with the first row's reason, instead of skipping every row."""
    data = config.data
    checked = references = 0
    prompts: list[list[dict]] = []
    records: list[PromptRecord] = []
    first_skip: RowSkip | None = None
    for index, row in itertools.islice(iter_rows(data), ROWS_CHECKED):
        checked += 1
        record = record_of(config, index, row, check_ground_truth=False)  # said below, with the column to name
        if isinstance(record, RowSkip):
            first_skip = first_skip or record
            continue
        prompts.append(record.messages)
        records.append(record)
        references += record.reference_completion is not None
    if checked and not prompts and first_skip is not None:
        raise RsampleError(f"none of the first {checked} rows of dataset {data.dataset!r} gives a prompt: {first_skip.detail} "
                           f"({first_skip.reason})")
    for spec in (spec for spec in config.reward_models if is_verifier(spec)):
        problems = [ground_truth_problem(config.answer_column, (record.columns or {}).get(config.answer_column)) for record in records]
        if records and all(problems):
            raise RsampleError(f"none of the first {checked} rows of dataset {data.dataset!r} has a ground truth for {spec}: the first "
                               f"row {problems[0]} (name its column with --answer-column)")
    if config.include_reference and prompts and not references:
        where = f"column {data.reference_column!r}" if data.reference_column else "a final assistant turn"
        raise RsampleError(f"--include-reference: none of the first {checked} rows of dataset {data.dataset!r} has a reference "
                           f"answer in {where}" + ("" if data.reference_column else " (name its column with --reference-column)"))
    check_policy_template(config, prompts)
    check_reward_templates(config, prompts)


def check_policy_template(config: RunConfig, prompts: list[list[dict]]) -> None:
    """A policy chat template that refuses the dataset's prompts (Gemma 2's refuses a system turn, which --system-prompt
    adds to every prompt) would skip every prompt once the workers have loaded the models: refused when it refuses
    every prompt checked, said when some. One that drops the system turn (Phi-3-medium's) is said: the output's
    messages would carry a system prompt the policy never saw."""
    from jinja2 import TemplateError

    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.registry import ZERO_COST_GENERATION

    if not prompts or config.models.generation_backend == ZERO_COST_GENERATION:
        return
    try:
        tokenizer = load_tokenizer(config.policy, "policy", config.policy in config.trust_remote_code)
    except RsampleError as exc:  # not loadable here: the workers say so if they cannot either
        log.info("the policy's chat template is not checked on the dataset: %s", exc)
        return
    refusals, dropped_system, dropped_from_rows = Counter(), None, None
    for messages in prompts:
        try:  # as the workers render it (templates.render)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 **config.sampling.chat_template_kwargs)
        except TemplateError as exc:
            refusals[first_line(exc)] += 1
            continue
        system = _system_text(messages)
        if dropped_system is None and system and system not in text:
            dropped_system = system
        elif dropped_from_rows is None and system and (row := _render_with_answer(tokenizer, messages, config)) is not None \
                and system not in row:
            dropped_from_rows = system
    if refusals:
        why, count = refusals.most_common(1)[0][0], sum(refusals.values())
        if count == len(prompts):
            raise RsampleError(f"the policy's chat template refuses every one of the first {len(prompts)} prompts of dataset "
                               f"{config.data.dataset!r} ({why}), so nothing could be generated")
        log.warning("the policy's chat template refuses %d of the first %d prompts (%s): those are skipped", count, len(prompts), why)
    if dropped_system is not None:
        log.warning("the policy's chat template leaves out the system turn (%r): the policy never sees it, while the output's "
                    "messages, chosen and rejected carry it", dropped_system[:60])
    if dropped_from_rows is not None:
        log.warning("the policy's chat template keeps the system turn (%r) only while a user turn is last, as Mistral v0.3's "
                    "does: the samples are drawn with it, but a trainer that renders the output's rows (prompt and answer) with "
                    "this template leaves it out", dropped_from_rows[:60])


def _system_text(messages: list[dict]) -> str | None:
    system = next((m["content"] for m in messages if m["role"] == "system" and isinstance(m["content"], str)), None)
    return system.strip() if system and system.strip() else None


def _render_with_answer(tokenizer, messages: list[dict], config: RunConfig) -> str | None:
    """A prompt with an answer, as a trainer renders an output row; None where the template refuses it (not a row's
    shape this check can judge)."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "An answer."}], tokenize=False,
                                             **config.sampling.chat_template_kwargs)
    except TemplateError:
        return None


def check_reward_templates(config: RunConfig, prompts: list[list[dict]]) -> None:
    """A reward model's chat template that refuses the dataset's conversations (Gemma's refuses a system turn) would
    skip those prompts after their completions were generated: refused when it refuses every prompt checked, said
    when it refuses some."""
    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.registry import ZERO_COST_REWARD
    from rsample.workers.backends.reward_specs import is_function, is_judge, is_verifier
    from rsample.workers.backends.templates import render_conversations
    from rsample.workers.common.errors import RejectedInput

    if not prompts or config.models.reward_backend == ZERO_COST_REWARD:
        return
    for spec in config.reward_models:
        if is_judge(spec) or is_verifier(spec) or is_function(spec):  # a judge renders a rubric of one user turn
            continue
        try:
            tokenizer = load_tokenizer(spec, "reward", spec in config.trust_remote_code)
        except RsampleError as exc:  # not loadable here (a head node offline): the workers say so if they cannot either
            log.info("the chat template of reward model %r is not checked on the dataset: %s", spec, exc)
            continue
        refusals, dropped_system = Counter(), None
        for messages in prompts:
            conversation = [*messages, {"role": "assistant", "content": "An answer."}]
            try:
                render_conversations(tokenizer, [conversation])
            except RejectedInput as exc:
                refusals[str(exc)] += 1
                continue
            system = _system_text(messages)
            if dropped_system is None and system and system not in tokenizer.apply_chat_template(conversation, tokenize=False):
                dropped_system = system
        if dropped_system is not None:
            log.warning("reward model %r: its chat template leaves out the system turn (%r) of a conversation with an answer: "
                        "it scores the answers without it", spec, dropped_system[:60])
        if not refusals:
            continue
        why = refusals.most_common(1)[0][0].partition(": ")[2]
        count = sum(refusals.values())
        if count == len(prompts):
            raise RsampleError(f"reward model {spec!r}: its chat template refuses every one of the first {len(prompts)} prompts "
                               f"of dataset {config.data.dataset!r} ({why}), so no prompt could be scored")
        log.warning("reward model %r: its chat template refuses %d of the first %d prompts (%s): those are skipped once "
                    "their completions are generated", spec, count, len(prompts), why)


def register_run(client: redis.Redis, config: RunConfig) -> tuple[RunConfig, bool]:
    """Stores the run unless this Redis has it already; returns (config, True if it existed). A `--run-id` that names a
    run of other settings is refused: that run would go on with its own, while the command said others."""
    from rsample.producer.driver.ledger import first_difference

    config = replace(config, run_id=config.run_id or run_id_for(config))
    keys = RunKeys(config.run_id)
    if client.exists(keys.config):
        existing = load_run(client, config.run_id)
        difference = first_difference(*(json.loads(json.dumps(run.output_settings())) for run in (existing, config)))  # as stored
        if difference:
            raise RsampleError(f"run {config.run_id} exists in this Redis with other settings ({difference}): give another "
                               f"--run-id, or take it out first (`rsample forget --run {config.run_id}`)")
        kept = {name: (value, getattr(config.jobs, name)) for name, value in asdict(existing.jobs).items()
                 if value != getattr(config.jobs, name)}
        if kept:  # not in its id: the same command finds the run, whose jobs go on under the settings it was made with
            log.warning("run %s keeps the job settings it was made with (%s): to change them, `rsample forget --run %s` and "
                        "run the command again (what is written is kept)", config.run_id, ", ".join(
                            f"--{name.replace('_', '-')} {old}, not {new}" for name, (old, new) in kept.items()), config.run_id)
        if not client.hexists(keys.stats, "rows_total"):  # lost with its counters, or saved by an older version apart
            client.hset(keys.stats, "rows_total", count_rows(config.data))
        return existing, True
    rows = count_rows(config.data)  # also proves that the dataset loads
    if rows == 0:
        data = config.data
        chosen = f" from row {data.start}" + (f" to {data.end}" if data.end is not None else "") if data.start or data.end is not None else ""
        raise RsampleError(f"dataset {data.dataset!r} has no rows{chosen}: nothing to sample (check --start, --end and the file)")
    check_columns(config)
    check_rows(config)
    config = replace(config, created_at=config.created_at or time.time())
    save_run(client, config, rows_total=rows)
    return config, False


def with_created_at_of(config: RunConfig, out: Path) -> RunConfig:
    """`config`, made when the run whose output `out` holds was first made, where that is this run: registered again
    in another Redis (`rsample run`'s embedded one is new each session; a Redis that lost the run), it keeps the moment
    its chat templates show, so that the rows still to come render the prompts the rows before did."""
    from rsample.producer.driver.ledger import output_header

    header = output_header(Path(out))
    created = header.get("created_at")
    if header.get("rsample_run") == (config.run_id or run_id_for(config)) and isinstance(created, (int, float)) and created > 0:
        return replace(config, created_at=float(created))
    return config


def load_or_recreate(client: redis.Redis, run_id: str | None, out: Path, overwrite: bool = False) -> RunConfig:
    """The run from Redis; or, when Redis lost it (restarted empty while no coordinator was there to re-create it),
    from the settings its output files keep, registered again under its id.

    Without `run_id`, the run whose files `out` holds, so that the same command goes on with it (a coordinator
    restarted on a Redis where someone has made a run since; a push to try again; a run Redis lost or `forget` took
    out, made again) — unless that run is finished and another is not: a new run given the last one's folder, or the
    same command for the finished one? Refused, naming both. `overwrite` means a new run: the latest. Without a run of
    its own, never a finished run: it would be fed again whole, into a new file, and unfinished for its workers."""
    import logging

    from rsample.producer.driver.ledger import output_header
    from rsample.workers.runtime.run_state import RunGone, list_run_ids, start_fresh_batch_ids, unfinished_runs

    owner = output_header(Path(out)).get("rsample_run") if run_id is None and not overwrite else None
    if owner:
        unfinished = unfinished_runs(client)
        latest = next(iter(unfinished), None)
        if owner not in unfinished and client.exists(RunKeys(owner).config) and latest is not None:
            raise RsampleError(f"{out} holds the output of run {owner}, which is finished, and run {latest} is not: pass "
                               f"--run {owner} to take {owner} up again (to push it again, say), or give run {latest} an --out "
                               "of its own")
        if latest not in (None, owner):
            logging.getLogger(__name__).info("run %s: the one whose output %s holds (the latest is %s; --run picks another)",
                                             owner, out, latest)
        run_id = owner
    if run_id is None and not unfinished_runs(client) and (runs := list_run_ids(client)):
        written = output_header(Path(out)).get("rsample_run")
        if overwrite and written in runs:  # the same command, --overwrite added: the files' own run, written anew
            run_id = written
        else:
            held = f"{out} holds none of them" if written is None else f"{out} holds run {written}"
            raise RsampleError(f"every run in this Redis is finished (the newest is {runs[0]}), and {held}: pass --run "
                               f"{runs[0]} to write it again there (generating it all again), or enqueue a new run")
    try:
        return load_run(client, run_id)
    except RunGone:
        header = output_header(Path(out))
        owner, settings = header.get("rsample_run"), header.get("settings")
        if not owner or not settings or (run_id and run_id != owner):
            raise
    config, _ = register_run(client, with_created_at_of(RunConfig.from_output_settings(owner, settings), Path(out)))
    start_fresh_batch_ids(client, owner)
    logging.getLogger(__name__).warning("this Redis has no run %s: re-created it from the settings kept with %s (job timeouts, "
                                        "retries and speed settings at their defaults)", owner, out)
    return config


def forget_run(client: redis.Redis, run_id: str) -> int:
    """Takes a run out of this Redis (its settings, counters, queues, jobs and workers' queue entries), so that workers
    following the runs go elsewhere: a run enqueued by mistake, or one no worker can serve; or what a run whose settings
    expired left. Its output files keep its settings: the same `rsample aggregate` command makes it again. Refused while
    a coordinator or a worker is at work on it, whose next writes would bring parts of it back. Returns how many keys
    went."""
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    from rsample.workers.runtime.processes import holder_may_live
    from rsample.workers.runtime.queues import make_queue
    from rsample.workers.runtime.redis_clock import redis_now
    from rsample.workers.runtime.run_state import run_queue_names

    keys = RunKeys(run_id)
    try:
        config = load_run(client, run_id)
    except RsampleError:  # its settings expired (30 days after it finished): what it left without an expiry still goes
        if not (run_queue_names(client, run_id) or run_keys(client, keys)):
            raise
        config = None
    holder = (client.get(keys.coordinator_lock) or b"").decode()
    if holder and holder_may_live(holder):
        raise RsampleError(f"run {run_id} has a coordinator ({holder.rsplit(':', 1)[0]}): stop it (Ctrl-C) first")
    names = set(run_queue_names(client, run_id)) | set(keys.all_queues(len(config.reward_models)) if config else ())
    queues = [make_queue(client, name) for name in sorted(names)]
    now = redis_now(client)  # the clock the workers' claims are scored on
    running = sum(client.zcount(queue.started_job_registry.key, now, "+inf") for queue in queues)  # live heartbeats only
    if running:
        raise RsampleError(f"run {run_id} has {running} running job{'s' * (running > 1)}: stop its workers first (or let them finish)")
    doomed = set(run_keys(client, keys))
    job_ids: set[str] = set()
    for queue in queues:  # RQ's keys by exact name: another run's (`<name>-v2`) or another tenant's never match
        registries = (queue.started_job_registry, queue.failed_job_registry, queue.finished_job_registry,
                      queue.deferred_job_registry, queue.scheduled_job_registry, queue.canceled_job_registry)
        job_ids |= set(queue.get_job_ids()) | {job_id for registry in registries for job_id in registry.get_job_ids(cleanup=False)}
        doomed |= {queue.key, getattr(queue, "intermediate_queue_key", queue.key), *(registry.key for registry in registries),
                   WORKERS_BY_QUEUE_KEY % queue.name,  # a worker killed outright stays listed there
                   queue.registry_cleaning_key}  # and holds its maintenance lock for 15 minutes if killed while cleaning
    if job_ids:  # each job's keys (`rq:job:<id>`, `rq:results:<id>`, `rq:execution:<id>:<n>`...): one pass over RQ's keys,
        # not two per job (a shared Redis of 300,000 keys took two minutes for 256 jobs); a job id holds no ':'
        wanted = {job_id.encode() for job_id in job_ids}
        doomed |= {key for key in client.scan_iter("rq:*", count=1000) if not wanted.isdisjoint(key.split(b":")[2:])}
    doomed = {key for key in doomed if client.exists(key)}
    with client.pipeline() as pipe:
        if doomed:
            pipe.delete(*doomed)
        if queues:
            pipe.srem(queues[0].redis_queues_keys, *(queue.key for queue in queues))
        pipe.zrem(RUNS_INDEX, run_id)
        pipe.execute()
    return len(doomed)


def run_keys(client: redis.Redis, keys: RunKeys) -> list:
    """The run's own keys: a run's name holds no ':' (`--run-id`), so `<prefix>:run:<name>:` begins no other run's."""
    return list(client.scan_iter(f"{_glob_escaped(keys.config.rsplit(':', 1)[0])}:*", count=1000))


def _glob_escaped(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
