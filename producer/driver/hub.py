"""Publishing a run to the Hugging Face Hub: the JSONL files and a dataset card, in one commit (a card already there keeps its
owner's parts: see card_merge).

The token comes from the environment (HF_TOKEN or the cached login) through huggingface_hub and is
never read, printed or written here. `api` is the seam tests replace.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rsample.producer.driver.card_merge import BEGIN, END, check_mergeable, declared_outputs, existing_card, merged_card
from rsample.producer.driver.summary import Summary
from rsample.producer.parquet import has_thinking
from rsample.producer.report.document import Report
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.stages.output import columns


def card_metadata(files: dict[str, Path], model_names: tuple[str, ...]) -> str:
    """The card's YAML: each file its own config (their columns differ, so they cannot be splits of one), pairs the
    default, so that `load_dataset(repo)` gives the pairs and `load_dataset(repo, "scores")` the scored candidates.
    A run without pairs has no default: `load_dataset(repo)` then names the configs there are (or, of one alone,
    reads it). Each config declares
    its columns' types (see `output.columns`), so that `datasets` need not guess them from a file's first rows."""
    from huggingface_hub import DatasetCardData

    configs = [
        {"config_name": name, "data_files": [{"split": "train", "path": f"{name}.jsonl"}], **({"default": True} if name == "pairs" else {})}
        for name in files
    ]
    features = [{"config_name": name, "features": [{"name": column, **kind} for column, kind in
                                                   columns(name, model_names, has_thinking(path)).items()]}
                for name, path in files.items()]
    features = json.loads(json.dumps(features))  # no object twice: YAML would write an alias, which `datasets` cannot read
    return DatasetCardData(tags=["rejection-sampling", "preference", "rsample"], configs=configs, dataset_info=features).to_yaml()


def report_section(report: Report | None) -> str:
    """The run report in the card: its warnings, its numbers and its figures (uploaded under report/ in the same
    commit; the configs name the JSONL files alone, so `load_dataset` never meets the pictures)."""
    if report is None:
        return ""
    lines = ["## Report", ""]
    lines += [f"> **Warning** — {warning}" for warning in report.warnings] + ([""] if report.warnings else [])
    lines += ["```", *report.lines, "```", ""]
    lines += [f"![{name}](report/{path.name})" for name, path in report.figures.items()]
    return "\n".join(lines) + "\n\n"


def remote_code_note(config: RunConfig) -> str:
    """Which models ran code from their own repositories: a reader of the data should know."""
    if not config.trust_remote_code:
        return ""
    return "\nModels that ran their repository's own code (`--trust-remote-code`): " + ", ".join(f"`{m}`" for m in config.trust_remote_code) + ".\n"


def reasoning_note(config: RunConfig, files: dict[str, Path] | None = None) -> str:
    """A reasoning policy's completions keep their thinking; a reader must know what the scores judged."""
    if any(has_thinking(path) for path in (files or {}).values()):
        return ("\nThe policy answers in the harmony format (gpt-oss): each assistant turn holds its answer (the final channel) "
                "in `content` and its thinking (the other channels) in `thinking`, where gpt-oss's chat template takes it. The "
                "rewards scored the answer alone, and a completion that never reached its answer was never chosen.\n")
    if not config.reasoning_end:
        return ""
    return (f"\nThe policy thinks before it answers: each completion holds its thinking, then `{config.reasoning_end}`, then its "
            "answer. The rewards scored the answer alone, and a completion whose thinking never ended was never chosen.\n")


def empty_files_note(empty: list[str]) -> str:
    if not empty:
        return ""
    return "\nNot uploaded, because the run wrote no rows to them: " + ", ".join(f"`{name}`" for name in empty) + ".\n"


def _rewards(config: RunConfig) -> str:
    """The reward models, and the names their scores have in the files where those differ (`--reward-model NAME=MODEL`)."""
    return ", ".join(f"`{spec}`" if name == spec else f"`{spec}` (as `{name}`)" for name, spec in zip(config.score_names, config.reward_models))


def _which_rows(config: RunConfig) -> str:
    data = config.data
    subset = f"subset `{data.subset}`, " if data.subset else ""
    prompt = ["prompt column" + "s" * (len(data.prompt_columns) > 1) + " " + " + ".join(f"`{c}`" for c in data.prompt_columns)]
    reference = [f"reference column `{data.reference_column}`"] if data.reference_column else []
    columns = "".join(f", {named}" for named in (prompt if data.prompt_columns else []) + reference)
    return f"{subset}split `{data.split}`{columns}"


SESSION_FIGURES = ("completions_generated", "tokens_generated", "seconds", "completions_per_second", "tokens_per_second", "unscored")
"""The summary's figures that are the pushing session's alone (a resumed run's earlier sessions are not in them)."""


def card_figures(summary: Summary) -> dict:
    """The summary's figures, less the session's when it generated nothing (a push retried once the run was written):
    zeros there would describe that session, not the data; or when Redis lost the counters they come from."""
    figures = summary.to_dict()
    if summary.completions_generated == 0 or summary.counted_since_loss:
        figures = {key: value for key, value in figures.items() if key not in (*SESSION_FIGURES, "counted_since_loss")}
    return figures


def session_note(summary: Summary) -> str:
    if summary.counted_since_loss:
        return ("Redis lost the run's counters during the session that pushed these files: its generation figures are left out; "
                "rows, pairs and drops are the whole run's; the report below is read from the files.\n\n")
    if summary.completions_generated == 0:
        return ("The session that pushed these files generated nothing (the run was written before): its rows, pairs and drops "
                "are the whole run's; the report below is read from the files.\n\n")
    return (f"Rows, pairs and drops are the whole run's; {', '.join(f'`{name}`' for name in SESSION_FIGURES)} are the pushing "
            "session's (a resumed run's earlier sessions are not counted); the report below is read from the files.\n\n")


def dataset_card(config: RunConfig, summary: Summary, files: dict[str, Path], report: Report | None = None,
                 empty: list[str] | None = None) -> str:
    settings = asdict(config)
    return f"""---
{card_metadata(files, config.score_names)}
---
{BEGIN}

# Rejection-sampling preference pairs

Best-of-{config.sampling.n} sampling from `{config.policy}` on `{config.data.dataset}` ({_which_rows(config)}),
scored by {_rewards(config)} (combined by `{config.combine}`), made with rsample.
Each row of `pairs` (the default config) has `messages` (the prompt), `chosen` and `rejected` conversations, and their
scores per reward model; the `scores` config, when uploaded, has every scored candidate: `load_dataset(repo, "scores")`,
and the `sft` config each prompt's best candidate as a supervised example: `load_dataset(repo, "sft")`.
{remote_code_note(config)}{reasoning_note(config, files)}{empty_files_note(empty or [])}
## Command

```
{config.command}
```

## Summary

| figure | value |
| --- | --- |
""" + "\n".join(f"| {key} | {json.dumps(value)} |" for key, value in card_figures(summary).items()) + f"""

{session_note(summary)}{report_section(report)}## Settings

```json
{json.dumps(settings, indent=2)}
```
{END}
"""


OUTPUT_FILES = ("pairs.jsonl", "scores.jsonl", "sft.jsonl")
"""The files rsample pushes (one per config) beside its card and the report's figures."""


def check_visibility(api, repo_id: str, private: bool) -> None:
    """`create_repo` leaves an existing repository as it is: a private run's data must not land in a public one (nor
    --public be said done in a private one)."""
    shown = getattr(api.repo_info(repo_id, repo_type="dataset"), "private", None)
    if shown is None or shown == private:
        return
    if private:
        raise RsampleError(f"the Hub dataset {repo_id} is public, and rsample pushes a run to a private one unless told --public: "
                           "pass --public to publish it there, or push to another repository (the JSONL files are kept locally)")
    raise RsampleError(f"the Hub dataset {repo_id} is private, and --public does not change an existing repository: make it "
                       "public on the Hub, or push without --public (the JSONL files are kept locally)")


def push_to_hub(repo_id: str, config: RunConfig, summary: Summary, files: dict[str, Path], private: bool = True, api=None,
                report: Report | None = None) -> str:
    """Uploads `files` (config name -> JSONL path), the report's figures and README.md; returns the dataset's URL.

    An empty file is left out (and named in the card): `datasets` cannot read a config with no rows, so uploading
    it would break `load_dataset` on the whole repository."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    empty = [name for name, path in files.items() if Path(path).stat().st_size == 0]
    files = {name: path for name, path in files.items() if name not in empty}
    if not files:
        raise RsampleError(f"nothing to push to the Hub dataset {repo_id}: the run wrote no rows to {', '.join(empty)}")
    api = api or HfApi()
    card = dataset_card(config, summary, files, report, empty)
    operations = [CommitOperationAdd(f"{name}.jsonl", str(path)) for name, path in files.items()]
    if report is not None:
        operations += [CommitOperationAdd(f"report/{path.name}", str(path)) for path in report.figures.values()]
    try:
        made = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        repo_id = getattr(made, "repo_id", None) or repo_id  # a name without namespace is made under the token's user
        check_visibility(api, repo_id, private)
        held = set(api.list_repo_files(repo_id, repo_type="dataset"))
        existing = existing_card(api, repo_id, held)
        earlier = declared_outputs(existing, OUTPUT_FILES)
        pushed = {operation.path_in_repo for operation in operations}
        theirs = sorted(pushed & (held - earlier))
        if theirs:
            raise RsampleError(f"the Hub dataset {repo_id} already holds {', '.join(theirs)}, which its card does not name as "
                               "rsample's: push to another repository, or delete them there first (the JSONL files are kept locally)")
        check_mergeable(repo_id, existing, card, held)
        removed = earlier & (held - pushed)  # left, they would sit beside a card that no longer describes them
        operations += [CommitOperationDelete(path) for path in sorted(removed)]
        operations.append(CommitOperationAdd("README.md", merged_card(card, existing, removed).encode("utf-8")))
        api.create_commit(repo_id, operations, commit_message=f"rsample run {config.run_id}", repo_type="dataset")
    except RsampleError:
        raise
    except Exception as exc:  # auth, network, permissions: one line, the files stay on disk
        raise RsampleError(f"could not push to the Hub dataset {repo_id} (the JSONL files are kept locally; the same command "
                           f"pushes them again, generating nothing): {first_line(exc)}") from None
    return f"https://huggingface.co/datasets/{repo_id}"
