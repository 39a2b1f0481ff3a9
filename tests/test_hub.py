"""Publishing to the Hub through the narrow seam: the API object is replaced, the files and card are real."""

import dataclasses
import json
import re

import pytest

from rsample.producer.cli import redacted_command
from rsample.producer.driver.hub import push_to_hub
from rsample.producer.driver.summary import Summary
from rsample.workers.common.config import DataSelection, RunConfig
from rsample.workers.common.errors import RsampleError


class RecordingApi:
    def __init__(self, fail: Exception | None = None, repo_files: tuple[str, ...] = ()):
        self.calls = []
        self.fail = fail
        self.repo_files = list(repo_files)

    def list_repo_files(self, repo_id, **kwargs):
        return self.repo_files

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail:
            raise self.fail

    def repo_info(self, repo_id, **kwargs):  # made as asked
        from types import SimpleNamespace

        return SimpleNamespace(id=repo_id, private=self.calls[0][2]["private"])

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, operations, kwargs))


def make_run(tmp_path):
    config = RunConfig(
        run_id="abc123", data=DataSelection("allenai/tulu-v2-sft-mixture"), policy="org/policy", reward_models=("org/rm",),
        command=redacted_command(["run", "--redis-url", "redis://:topsecret@db:6379/0", "--n", "8"]),
    )
    summary = Summary(rows=11, duplicate_rows=1, skipped={"empty content": 1}, dropped_identical=2, dropped_margin=0,
                      pairs_written=7, completions_generated=72, tokens_generated=9000, seconds=12.0)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt_id": "x"}\n')
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"prompt_id": "x", "completion_index": 0}\n')
    return config, summary, {"pairs": pairs, "scores": scores}


def test_push_uploads_both_files_and_a_card_in_one_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    config, summary, files = make_run(tmp_path)
    api = RecordingApi()
    url = push_to_hub("me/pairs", config, summary, files, api=api)
    assert url == "https://huggingface.co/datasets/me/pairs"
    assert api.calls[0] == ("create_repo", "me/pairs", {"repo_type": "dataset", "private": True, "exist_ok": True})
    _, repo, operations, kwargs = api.calls[1]
    assert kwargs["repo_type"] == "dataset"
    uploaded = {op.path_in_repo: op for op in operations}
    assert set(uploaded) == {"pairs.jsonl", "scores.jsonl", "README.md"}
    assert uploaded["pairs.jsonl"].path_or_fileobj == str(files["pairs"])
    card = uploaded["README.md"].path_or_fileobj.decode()
    assert card.startswith("---\n")
    assert "path: pairs.jsonl" in card and "path: scores.jsonl" in card
    assert "Best-of-4 sampling from `org/policy` on `allenai/tulu-v2-sft-mixture`" in card
    assert "\"run_id\": \"abc123\"" in card
    assert "| pairs_written | 7 |" in card and '"empty content": 1' in card
    assert "| completions_generated | 72 |" in card and "are the pushing session's" in card
    assert "redis://:***@db:6379/0" in card
    assert "topsecret" not in card and "hf_secret_token_value" not in card


def test_a_failed_push_is_one_line_and_keeps_the_files(tmp_path):
    config, summary, files = make_run(tmp_path)
    with pytest.raises(RsampleError, match="could not push to the Hub dataset me/pairs .*kept locally.*401 Unauthorized"):
        push_to_hub("me/pairs", config, summary, files, api=RecordingApi(fail=RuntimeError("401 Unauthorized\nmore")))
    assert files["pairs"].exists()


class FolderApi:
    """The Hub as a folder: each commit's files land where the Hub would put them in the dataset repo."""

    def __init__(self, folder, private: bool | None = None):
        self.folder = folder
        self.private = private
        """The repository's visibility once it exists: `create_repo(exist_ok=True)` leaves it as it is."""

    def create_repo(self, repo_id, private=True, **kwargs):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.private = private if self.private is None else self.private

    def repo_info(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(id=repo_id, private=self.private)

    def list_repo_files(self, repo_id, **kwargs):
        return sorted(str(path.relative_to(self.folder)) for path in self.folder.rglob("*") if path.is_file())

    def hf_hub_download(self, repo_id, filename, **kwargs):
        return str(self.folder / filename)

    def create_commit(self, repo_id, operations, **kwargs):
        from huggingface_hub import CommitOperationDelete

        for operation in operations:
            if isinstance(operation, CommitOperationDelete):
                (self.folder / operation.path_in_repo).unlink()
                continue
            source = operation.path_or_fileobj
            data = source if isinstance(source, bytes) else open(source, "rb").read()
            (self.folder / operation.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / operation.path_in_repo).write_bytes(data)


def test_the_card_declares_pairs_and_scores_as_two_configs(tmp_path):
    from huggingface_hub import DatasetCard

    config, summary, files = make_run(tmp_path)
    push_to_hub("me/pairs", config, summary, files, api=FolderApi(tmp_path / "repo"))
    card = DatasetCard((tmp_path / "repo" / "README.md").read_text())
    configs = {c["config_name"]: c for c in card.data.configs}
    assert set(configs) == {"pairs", "scores"}
    assert configs["pairs"]["default"] is True and "default" not in configs["scores"]
    assert configs["pairs"]["data_files"] == [{"split": "train", "path": "pairs.jsonl"}]
    assert card.data.tags == ["rejection-sampling", "preference", "rsample"]


def test_the_card_shows_the_run_report_and_the_dataset_still_loads(tmp_path):
    """The report's figures go up in the same commit and the card shows them; `load_dataset` still reads the pairs."""
    import json

    import datasets

    from rsample.producer.report.document import write_report

    config, summary, files = make_run(tmp_path)
    prompt = [{"role": "user", "content": "q"}]
    rows = [{"prompt_id": f"p{i}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": "a much longer answer " * (i + 2)}],
             "rejected": prompt + [{"role": "assistant", "content": "short"}], "chosen_score": {"org/rm": float(i + 2)},
             "rejected_score": {"org/rm": 0.5}, "num_candidates": 4, "num_unique": 4} for i in range(30)]
    files["pairs"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    del files["scores"]
    report = write_report(files["pairs"], None, tmp_path / "report")
    repo = tmp_path / "repo"
    push_to_hub("me/pairs", config, summary, files, api=FolderApi(repo), report=report)
    card = (repo / "README.md").read_text()
    assert "## Report" in card and "length bias" in card and "chosen longer than rejected in 100% of pairs" in card
    for name, path in report.figures.items():
        assert f"![{name}](report/{path.name})" in card
        assert (repo / "report" / path.name).read_bytes() == path.read_bytes()
    loaded = datasets.load_dataset(str(repo), split="train")
    assert loaded.num_rows == 30 and loaded[0]["prompt_id"] == "p0"


def test_the_sft_file_is_a_config_of_its_own_and_models_with_their_own_code_are_named(tmp_path):
    from dataclasses import replace

    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    config, summary, files = make_run(tmp_path)
    config = replace(config, reward_models=("verify:math", "org/armo-rm"), trust_remote_code=("org/armo-rm",), sft=True)
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt_id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    push_to_hub("me/pairs", config, summary, {**files, "sft": sft}, api=FolderApi(tmp_path / "repo"))
    text = (tmp_path / "repo" / "README.md").read_text()
    assert {c["config_name"] for c in DatasetCard(text).data.configs} == {"pairs", "scores", "sft"}
    assert "Models that ran their repository's own code (`--trust-remote-code`): `org/armo-rm`." in text
    assert load_dataset(str(tmp_path / "repo"), "sft", split="train")[0]["messages"][1]["content"] == "a"


def test_a_run_without_pairs_uploads_the_files_that_have_rows_and_the_repository_still_loads(tmp_path):
    """`datasets` cannot read an empty JSONL config, and one such config breaks `load_dataset` on the whole
    repository: the empty pairs file stays home, the card says so, and the scores load."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    config, summary, files = make_run(tmp_path)
    files["pairs"].write_text("")
    repo = tmp_path / "repo"
    push_to_hub("me/pairs", config, summary, files, api=FolderApi(repo))
    assert not (repo / "pairs.jsonl").exists()
    text = (repo / "README.md").read_text()
    assert [c["config_name"] for c in DatasetCard(text).data.configs] == ["scores"]
    assert "Not uploaded, because the run wrote no rows to them: `pairs`." in text
    assert load_dataset(str(repo), "scores", split="train")[0]["prompt_id"] == "x"


def test_a_run_that_wrote_no_rows_at_all_is_not_pushed(tmp_path):
    config, summary, files = make_run(tmp_path)
    for path in files.values():
        path.write_text("")
    api = RecordingApi()
    with pytest.raises(RsampleError, match="nothing to push to the Hub dataset me/pairs: the run wrote no rows to pairs, scores"):
        push_to_hub("me/pairs", config, summary, files, api=api)
    assert api.calls == []


def test_the_card_of_a_reasoning_run_says_what_the_scores_judged(tmp_path):
    from dataclasses import replace

    from rsample.producer.driver.hub import dataset_card

    config, summary, files = make_run(tmp_path)
    assert "thinks before it answers" not in dataset_card(config, summary, files)
    card = dataset_card(replace(config, reasoning_end="</think>"), summary, files)
    assert ("each completion holds its thinking, then `</think>`, then its answer. The rewards scored the answer alone, and a "
            "completion whose thinking never ended was never chosen.") in card


def test_the_card_says_which_subset_and_columns_the_prompts_came_from(tmp_path):
    from dataclasses import replace

    from rsample.producer.driver.hub import dataset_card

    config, summary, files = make_run(tmp_path)
    assert f"on `{config.data.dataset}` (split `train`),\n" in dataset_card(config, summary, files)
    data = replace(config.data, dataset="openai/gsm8k", subset="main", prompt_columns=("question",), reference_column="answer")
    card = dataset_card(replace(config, data=data), summary, files)
    assert "on `openai/gsm8k` (subset `main`, split `train`, prompt column `question`, reference column `answer`),\n" in card
    named = dataset_card(replace(config, reward_models=("/scratch/rm",), reward_names=("quality",)), summary, files)
    assert "scored by `/scratch/rm` (as `quality`) (combined by" in named
    assert "- name: quality\n" in named and "/scratch/rm\n" not in named.split("---")[1]  # the card's column types: the name alone


def test_a_real_runs_files_load_through_the_card_as_written_even_when_the_first_megabytes_hold_no_reference(tmp_path):
    """`datasets` types a column from a file's first block (10 MB): a run whose first prompts have no reference would
    type `reference_completion` as null and fail on the first block with one. The card declares every column's type;
    each config loads back exactly the rows the files hold."""
    import json

    from conftest import read_jsonl, rsample, write_jsonl
    from datasets import load_dataset

    from rsample.producer.driver.ledger import output_header
    from rsample.workers.stages.output import features

    rows = [{"prompt": f"name a river, number {i}"} for i in range(6)]
    rows += [{"messages": [{"role": "user", "content": f"name a lake, number {i}"}, {"role": "assistant", "content": "Lake Baikal"}]}
             for i in range(3)]
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    files = {"pairs": out / "pairs.jsonl", "scores": out / "scores.jsonl", "sft": out / "sft.jsonl"}
    rsample("run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--n", "3", "--reward-backend", "length",
            "--reward-model", "org/rm-a", "--reward-model", "/local/path/rm-b", "--include-reference", "--sft", "--no-progress",
            "--out", str(files["pairs"]), "--scores-out", str(files["scores"]), "--sft-out", str(files["sft"]))
    header = output_header(files["pairs"])
    config = RunConfig.from_output_settings(header["rsample_run"], header["settings"])
    summary = Summary(rows=9, duplicate_rows=0, skipped={}, dropped_identical=0, dropped_margin=0, pairs_written=9,
                      completions_generated=27, tokens_generated=27, seconds=1.0)
    repo = tmp_path / "repo"
    push_to_hub("me/pairs", config, summary, files, api=FolderApi(repo))
    for name, path in files.items():
        loaded = load_dataset(str(repo), name, split="train")
        assert loaded.to_list() == read_jsonl(path), name
    pairs = read_jsonl(files["pairs"])
    assert [p["reference_completion"] for p in pairs] == [None] * 6 + ["Lake Baikal"] * 3
    assert {(p["chosen_finish_reason"], p["rejected_finish_reason"]) for p in pairs[6:]} <= {("stop", "reference"), ("reference", "stop"), ("stop", "stop")}

    without = [p for p in pairs if p["reference_completion"] is None]
    with_reference = [p for p in pairs if p["reference_completion"] is not None]
    big = "".join(json.dumps(p) + "\n" for p in without) * (12_000_000 // sum(len(json.dumps(p)) + 1 for p in without) + 1)
    folder = tmp_path / "big"  # a repository of its own: `datasets` caches what it loaded from a folder by its path
    folder.mkdir()
    (folder / "README.md").write_text((repo / "README.md").read_text())
    (folder / "pairs.jsonl").write_text(big + "".join(json.dumps(p) + "\n" for p in with_reference))  # > 10 MB of nulls first
    loaded = load_dataset(str(folder), split="train")
    assert loaded[-1]["reference_completion"] == "Lake Baikal" and loaded[0]["reference_completion"] is None
    assert loaded[-1]["reference_completion_score"] == with_reference[-1]["reference_completion_score"]
    local = load_dataset("json", data_files=str(folder / "pairs.jsonl"), split="train", features=features("pairs", config.reward_models))
    assert local.to_list() == loaded.to_list()  # the same types for a local file, as the README shows


def test_a_push_retried_by_the_same_command_describes_the_run_not_its_own_empty_session(tmp_path, monkeypatch):
    """A failed push says the same command pushes the files again, generating nothing. It did, with a card whose summary
    was that session's: 0 completions, 0 tokens, 0.6 s, for files that hold 3 prompts x 4 completions."""
    import huggingface_hub
    import huggingface_hub.constants
    from click.testing import CliRunner
    from conftest import read_jsonl, write_jsonl

    from rsample.producer.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"question {i}"} for i in range(3)])
    out = tmp_path / "pairs.jsonl"
    command = ["run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--n", "4", "--reward-backend", "length",
               "--reward-model", "org/rm", "--no-progress", "--out", str(out), "--scores-out", str(tmp_path / "scores.jsonl"),
               "--push-to-hub", "me/pairs", "--parquet"]
    failing, recording = RecordingApi(fail=RuntimeError("503 Service Unavailable")), RecordingApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: failing)
    first = CliRunner().invoke(main, command)
    assert first.exit_code != 0 and "could not push to the Hub dataset me/pairs" in first.output
    assert len(read_jsonl(out)) == 3  # the files stay
    assert (tmp_path / "pairs.parquet").exists() and (tmp_path / "scores.parquet").exists()  # written before the push
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: recording)
    second = CliRunner().invoke(main, command)
    assert second.exit_code == 0, second.output
    card = next(op for op in recording.calls[1][2] if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert "| pairs_written | 3 |" in card and "hf_not_a_real_token" not in card
    assert "completions_generated" not in card and "tokens_per_second" not in card
    assert "The session that pushed these files generated nothing" in card
    assert "pairs 3" in card  # the report, read from the files


def test_a_card_whose_session_lost_its_counters_says_so_instead_of_giving_them(tmp_path):
    """Redis lost the run's counters during the pushing session: its completions were those counted since, zero when the
    loss came after the last generation, and the card said the session generated nothing."""
    import dataclasses

    config, summary, files = make_run(tmp_path)
    api = RecordingApi()
    push_to_hub("me/pairs", config, dataclasses.replace(summary, completions_generated=0, counted_since_loss=True), files, api=api)
    card = next(op for op in api.calls[1][2] if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert "Redis lost the run's counters during the session that pushed these files" in card
    assert "generated nothing" not in card and "completions_generated" not in card and "| pairs_written | 7 |" in card


def test_a_second_push_takes_away_what_the_first_run_wrote_and_this_one_did_not(tmp_path):
    """The first run pushed scores and figures; the second pushes its pairs alone: the repository holds what its card
    describes, and the user's own files stay."""
    from rsample.producer.report.document import write_report

    config, summary, files = make_run(tmp_path)
    api = FolderApi(tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "NOTES.md").write_text("mine")
    prompt = [{"role": "user", "content": "q"}]
    files["pairs"].write_text("".join(json.dumps({
        "prompt_id": f"p{i}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": "long answer " * (i + 2)}],
        "rejected": prompt + [{"role": "assistant", "content": "no"}], "chosen_score": {"org/rm": 1.0 + i},
        "rejected_score": {"org/rm": 0.0}, "num_candidates": 4, "num_unique": 3}) + "\n" for i in range(5)))
    report = write_report(files["pairs"], None, tmp_path / "report")
    push_to_hub("me/pairs", config, summary, files, api=api, report=report)
    first = set(api.list_repo_files("me/pairs"))
    assert {"scores.jsonl", "NOTES.md"} <= first and any(name.startswith("report/") for name in first)

    push_to_hub("me/pairs", config, summary, {"pairs": files["pairs"]}, api=api)
    assert set(api.list_repo_files("me/pairs")) == {"pairs.jsonl", "README.md", "NOTES.md"}


def test_a_push_into_a_repository_rsample_did_not_make_takes_nothing_away(tmp_path):
    """Files named as rsample names its own, in a repository whose card is not rsample's (or one it made, in a folder
    its card does not declare), are the user's."""
    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    (repo / "report").mkdir(parents=True)
    (repo / "README.md").write_text("---\ntags: mine\nconfigs:\n- config_name: mine\n  data_files: sft.jsonl\n---\n# My dataset\n")
    (repo / "sft.jsonl").write_text('{"messages": []}\n')
    (repo / "report" / "my_notes.md").write_text("notes")
    api = FolderApi(repo)
    push_to_hub("me/pairs", config, summary, {"pairs": files["pairs"]}, api=api)
    assert {"sft.jsonl", "report/my_notes.md"} <= set(api.list_repo_files("me/pairs"))
    from huggingface_hub import DatasetCard

    card = DatasetCard((repo / "README.md").read_text())  # one tag, written as YAML allows: kept, as their config
    assert card.data.tags == ["mine", "rejection-sampling", "preference", "rsample"]
    assert [c["config_name"] for c in card.data.configs] == ["mine", "pairs"]
    (repo / "report" / "more_notes.md").write_text("notes")  # the card is rsample's now; this file is not declared in it
    push_to_hub("me/pairs", config, summary, {"pairs": files["pairs"]}, api=api)
    assert {"sft.jsonl", "report/my_notes.md", "report/more_notes.md"} <= set(api.list_repo_files("me/pairs"))
    named = dataclasses.replace(config, command="run --dataset report/more_notes.md --out pairs.jsonl")  # a path in its command
    push_to_hub("me/pairs", named, summary, {"pairs": files["pairs"]}, api=api)
    push_to_hub("me/pairs", named, summary, {"pairs": files["pairs"]}, api=api)
    assert "report/more_notes.md" in set(api.list_repo_files("me/pairs"))


def test_a_harmony_runs_repository_loads_with_the_thinking_as_a_field_of_the_turns(tmp_path):
    """gpt-oss's runs keep each answer's thinking apart (`thinking`): the card declares it, says it, and `datasets` reads it."""
    import datasets

    config, summary, files = make_run(tmp_path)
    prompt = [{"role": "user", "content": "q"}]
    rows = [{"prompt_id": f"p{i}", "messages": prompt,
             "chosen": prompt + [{"role": "assistant", "content": f"answer {i}", "thinking": f"thought {i}"}],
             "rejected": prompt + [{"role": "assistant", "content": "", "thinking": "never answered"}],
             "chosen_score": {"org/rm": 1.0}, "rejected_score": {"org/rm": 0.0}, "reference_completion": None,
             "reference_completion_score": None, "num_candidates": 2, "num_unique": 2, "chosen_finish_reason": "stop",
             "rejected_finish_reason": "length"} for i in range(3)]
    files["pairs"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    files["scores"].write_text(json.dumps({"prompt_id": "p0", "completion_index": 0, "completion": "answer 0", "thinking": "thought 0",
                                           "scores": {"org/rm": 1.0}, "is_reference": False, "finish_reason": "stop",
                                           "num_tokens": 5}) + "\n")
    repo = tmp_path / "repo"
    push_to_hub("me/pairs", config, summary, files, api=FolderApi(repo))
    card = (repo / "README.md").read_text()
    assert "harmony format (gpt-oss)" in card and "thinking never ended" not in card
    pairs = datasets.load_dataset(str(repo), split="train")
    assert pairs[1]["chosen"][-1] == {"role": "assistant", "content": "answer 1", "thinking": "thought 1"}
    assert pairs[1]["chosen"][0] == {"role": "user", "content": "q", "thinking": None}  # a struct's missing field
    assert datasets.load_dataset(str(repo), "scores", split="train")[0]["thinking"] == "thought 0"


@pytest.mark.parametrize("private", [True, False])
def test_a_push_never_lands_in_a_repository_of_the_other_visibility(tmp_path, private):
    """`create_repo(exist_ok=True)` leaves an existing repository as it is: a private run's data went into a public
    one, and --public said done into a private one. Refused before any upload; the files stay."""
    config, summary, files = make_run(tmp_path)
    api = FolderApi(tmp_path / "repo", private=not private)
    with pytest.raises(RsampleError, match=f"the Hub dataset me/pairs is {'public' if private else 'private'}, and "):
        push_to_hub("me/pairs", config, summary, files, private=private, api=api)
    assert api.list_repo_files("me/pairs") == [] and files["pairs"].exists()


def test_a_repository_named_without_its_namespace_is_pushed_where_create_repo_made_it(tmp_path):
    """`--push-to-hub tulu-pairs`: the Hub makes alice/tulu-pairs (the token's user) and says so in the RepoUrl;
    every later call named `tulu-pairs`, no repository of this user, and the push failed after the whole run."""
    from huggingface_hub import RepoUrl

    class NamespacedApi(FolderApi):
        def create_repo(self, repo_id, **kwargs):
            super().create_repo(repo_id, **kwargs)
            return RepoUrl(f"https://huggingface.co/datasets/{repo_id if '/' in repo_id else 'alice/' + repo_id}")

        def list_repo_files(self, repo_id, **kwargs):
            assert "/" in repo_id, f"404 Repository Not Found: {repo_id}"
            return super().list_repo_files(repo_id, **kwargs)

        def create_commit(self, repo_id, operations, **kwargs):
            assert "/" in repo_id, f"404 Repository Not Found: {repo_id}"
            super().create_commit(repo_id, operations, **kwargs)

    config, summary, files = make_run(tmp_path)
    url = push_to_hub("tulu-pairs", config, summary, files, api=NamespacedApi(tmp_path / "repo"))
    assert url == "https://huggingface.co/datasets/alice/tulu-pairs" and (tmp_path / "repo" / "pairs.jsonl").exists()


def test_a_config_the_user_added_to_rsamples_card_keeps_its_file(tmp_path):
    """Only rsample's own files go: a user's filtered copy declared in the card was deleted at the next push."""
    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    api = FolderApi(repo)
    push_to_hub("me/pairs", config, summary, files, api=api)
    card = (repo / "README.md").read_text()
    (repo / "README.md").write_text(card.replace("configs:\n", "configs:\n- config_name: filtered\n  data_files:\n"
                                                              "  - split: train\n    path: mine/filtered.jsonl\n", 1))
    (repo / "mine").mkdir()
    (repo / "mine" / "filtered.jsonl").write_text('{"prompt_id": "x"}\n')
    push_to_hub("me/pairs", config, summary, files, api=api)
    assert (repo / "mine" / "filtered.jsonl").exists()
    import datasets  # and the card still declares it: the second push's card was written without it

    assert datasets.load_dataset(str(repo), "filtered", split="train")[0]["prompt_id"] == "x"
    assert datasets.load_dataset(str(repo), split="train")[0]["prompt_id"] == "x"  # the pairs, still the default


def user_card(repo) -> str:
    repo.mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "data" / "train.jsonl").write_text('{"text": "theirs"}\n')
    card = ("---\nlicense: cc-by-4.0\nlanguage:\n- en\nconfigs:\n- config_name: default\n  default: true\n  data_files:\n"
            "  - split: train\n    path: data/train.jsonl\n---\n# My dataset\n\nWords I wrote about it.\n")
    (repo / "README.md").write_text(card)
    return card


def test_a_push_into_a_repository_with_the_users_own_card_keeps_it(tmp_path):
    """A user's card was replaced by rsample's: their license, prose and configs lost. They stay; rsample's part is added,
    and replaced (not added twice) at the next push."""
    import datasets
    import yaml

    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    user_card(repo)
    api = FolderApi(repo)
    push_to_hub("me/pairs", config, summary, files, api=api)
    push_to_hub("me/pairs", config, dataclasses.replace(summary, pairs_written=5), {"pairs": files["pairs"]}, api=api)

    text = (repo / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---\n")[1])
    assert metadata["license"] == "cc-by-4.0" and metadata["language"] == ["en"]
    assert {c["config_name"]: c.get("default", False) for c in metadata["configs"]} == {"default": True, "pairs": False}
    assert "rsample" in metadata["tags"] and [i["config_name"] for i in metadata["dataset_info"]] == ["pairs"]
    assert text.count("Words I wrote about it.") == 1 and text.index("# My dataset") < text.index("# Rejection-sampling")
    assert text.count("# Rejection-sampling preference pairs") == 1
    assert "| pairs_written | 5 |" in text and "| pairs_written | 7 |" not in text
    assert not (repo / "scores.jsonl").exists()  # the first push's, taken away with its config
    assert datasets.load_dataset(str(repo), split="train")[0] == {"text": "theirs"}  # their default stays the default
    assert datasets.load_dataset(str(repo), "pairs", split="train")[0]["prompt_id"] == "x"


def test_a_card_rsample_wrote_before_it_marked_its_part_is_replaced_whole(tmp_path):
    from huggingface_hub import DatasetCard

    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    api = FolderApi(repo)
    push_to_hub("me/pairs", config, summary, files, api=api)
    unmarked = (repo / "README.md").read_text().replace("<!-- rsample:begin -->\n", "").replace("<!-- rsample:end -->\n", "")
    (repo / "README.md").write_text(unmarked.replace("| pairs_written | 7 |", "| pairs_written | 3 |"))
    push_to_hub("me/pairs", config, summary, files, api=api)
    card = DatasetCard((repo / "README.md").read_text())
    assert card.text.count("# Rejection-sampling preference pairs") == 1 and "| pairs_written | 3 |" not in card.text
    assert card.data.tags == ["rejection-sampling", "preference", "rsample"]


@pytest.mark.parametrize("card", [None, "---\ntags:\n- mine\n---\n# Mine\n"])
def test_a_file_rsample_would_overwrite_that_is_not_its_own_is_refused(tmp_path, card):
    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "scores.jsonl").write_text('{"mine": 1}\n')
    if card:
        (repo / "README.md").write_text(card)
    with pytest.raises(RsampleError, match="the Hub dataset me/pairs already holds scores.jsonl, which its card does not name as "
                                           "rsample's: push to another repository, or delete them there first"):
        push_to_hub("me/pairs", config, summary, files, api=FolderApi(repo))
    assert (repo / "scores.jsonl").read_text() == '{"mine": 1}\n' and not (repo / "pairs.jsonl").exists()
    assert (repo / "README.md").exists() == bool(card)


def test_a_card_that_cannot_be_read_is_refused_not_replaced(tmp_path):
    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("---\nlicense: [mit\n---\n# Mine\n")
    with pytest.raises(RsampleError, match="the Hub dataset me/pairs has a README.md that is no readable dataset card .*mend it"):
        push_to_hub("me/pairs", config, summary, files, api=FolderApi(repo))
    assert (repo / "README.md").read_text().endswith("# Mine\n") and not (repo / "pairs.jsonl").exists()


def test_a_repository_id_the_hub_refuses_is_refused_before_the_run(monkeypatch):
    import huggingface_hub.constants

    from rsample.producer.cli import check_push_options

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    for bad in ("me/bad name", "a/b/c"):
        with pytest.raises(RsampleError, match=f"--push-to-hub '{bad}' is no Hub repository id: "):
            check_push_options(bad, False)
    check_push_options("me/good-name_1.0", False)


def test_a_card_written_by_datasets_keeps_its_default_config_and_the_repository_loads(tmp_path):
    """`datasets`' own push names its config `default`, with no `default: true`, which `datasets` reads as the default
    all the same: rsample's `pairs`, also marked default, made the repository unloadable ("several default configs")."""
    import datasets

    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train-00000.jsonl").write_text('{"text": "theirs"}\n')
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train-*\n---\n")
    push_to_hub("me/pairs", config, summary, files, api=FolderApi(repo))
    assert datasets.load_dataset(str(repo), split="train")[0] == {"text": "theirs"}
    assert datasets.load_dataset(str(repo), "pairs", split="train")[0]["prompt_id"] == "x"


def test_a_users_config_naming_a_file_rsample_writes_keeps_that_file_at_every_push(tmp_path):
    """Once the card was rsample's, every config's `scores.jsonl` counted as rsample's own: the user's config `mine`
    and its file went at the second push of a run without scores."""
    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "scores.jsonl").write_text('{"mine": 1}\n')
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: mine\n  data_files: scores.jsonl\n---\n# Mine\n")
    api = FolderApi(repo)
    for _ in range(2):
        push_to_hub("me/pairs", config, summary, {"pairs": files["pairs"]}, api=api)
    assert (repo / "scores.jsonl").read_text() == '{"mine": 1}\n'
    import datasets

    assert datasets.load_dataset(str(repo), "mine", split="train")[0] == {"mine": 1}


@pytest.mark.parametrize("card, files, refusal", [
    ("---\nconfigs:\n- config_name: pairs\n  default: true\n  data_files: data/pairs.csv\n---\n# Mine\n", {"data/pairs.csv": "a\n1\n"},
     "the Hub dataset me/pairs's card declares a config 'pairs' of its own (data/pairs.csv), the name of one of rsample's: "),
    ("---\nlicense: mit\n---\n# Mine\n", {"data/train.jsonl": '{"a": 1}\n'},
     "the Hub dataset me/pairs holds data files its card declares no configs for (data/train.jsonl): once the card declares "
     "rsample's, `datasets` would no longer read them"),
], ids=["a config of rsample's name", "files read without configs"])
def test_a_push_that_would_hide_the_users_data_is_refused(tmp_path, card, files, refusal):
    import datasets

    config, summary, outputs = make_run(tmp_path)
    repo = tmp_path / "repo"
    for name, text in {"README.md": card, **files}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    with pytest.raises(RsampleError, match=re.escape(refusal)):
        push_to_hub("me/pairs", config, summary, outputs, api=FolderApi(repo))
    assert (repo / "README.md").read_text() == card and not (repo / "pairs.jsonl").exists()
    assert datasets.load_dataset(str(repo), split="train").num_rows == 1  # still theirs, as it was


def test_markers_the_users_prose_shows_are_not_taken_for_rsamples(tmp_path):
    """The first marker anywhere in the text was taken for rsample's: a README that mentions them (in a sentence, in a
    code block, the first on a line of its own) got rsample's part once more at each push, or lost prose."""
    config, summary, files = make_run(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    prose = ("# Mine\n\nrsample keeps its part between `<!-- rsample:begin -->` and `<!-- rsample:end -->`.\n\n"
             "```\n<!-- rsample:begin -->\nan example\n<!-- rsample:end -->\n```\n\n<!-- rsample:begin -->\n\nWords after a lone marker.\n")
    (repo / "README.md").write_text("---\nlicense: mit\n---\n" + prose)
    api = FolderApi(repo)
    for _ in range(3):
        push_to_hub("me/pairs", config, summary, files, api=api)
    text = (repo / "README.md").read_text()
    assert text.split("---\n", 2)[2].startswith(prose.rstrip()) and text.count("# Rejection-sampling preference pairs") == 1
