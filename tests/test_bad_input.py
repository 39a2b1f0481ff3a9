"""A dataset with good and malformed rows of every kind: all good pairs come out, every bad row is counted by reason."""

import json

from conftest import read_jsonl, rsample, write_jsonl
from faults import assert_exactly_once, prompts_that_got_candidates

GOOD = [{"prompt": f"explain step {i} of the {word} test"} for i, word in enumerate(["river", "city", "music", "code"] * 10)]
BAD = {
    "invalid JSON": [b'{"prompt": "unterminated', b"[1, 2"],
    "invalid UTF-8": [b'{"prompt": "caf\xe9 au lait"}', b'{"prompt": "\xff\xfe"}'],
    "no messages, prompt or conversations field": [{"question": "where is the prompt"}, {"text": "x"}],
    "empty content": [{"prompt": "   "}, {"messages": [{"role": "user", "content": ""}]}],
    "non-string content": [{"prompt": 42}, {"messages": [{"role": "user", "content": {"text": "hi"}}]}],
    "invalid text": [{"prompt": "half an emoji \ud83d"}],  # JSON may escape a lone UTF-16 surrogate, which no UTF-8 can hold
    "non-text content": [{"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image"}]}]}],
    "unknown role": [{"messages": [{"role": "robot", "content": "beep"}]}, {"messages": [{"role": "human", "content": "hi"}]}],
    "prompt does not end with a user turn": [{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}],
    "policy chat template rejected the prompt: Conversation roles must alternate": [
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "assistant", "content": "e"}, {"role": "user", "content": "f"}]},
    ],
    "prompt too long for the policy context (256 tokens) with --max-new-tokens 6": [{"prompt": "river " * 400}, {"messages": [{"role": "user", "content": "city " * 300}]}],
}
DUPLICATES = [GOOD[0], GOOD[7], GOOD[7]]


def test_mixed_dataset_gives_all_good_pairs_and_counts_every_bad_row(tiny_models, tmp_path):
    bad = [row for items in BAD.values() for row in items]
    rows = []
    for index, good in enumerate(GOOD):  # bad rows spread over every batch
        rows.append(good)
        if index < len(bad):
            rows.append(bad[index])
    rows[30:30] = DUPLICATES[:1]
    rows += DUPLICATES[1:]
    lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for row in rows]
    dataset = tmp_path / "mixed.jsonl"
    dataset.write_bytes(b"\n".join(lines) + b"\n")

    out = tmp_path / "pairs.jsonl"
    result = rsample("run", "--dataset", str(dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["reward"],
                     "--n", "2", "--temperature", "1.0", "--max-new-tokens", "6", "--batch-size", "8", "--out", str(out), "--no-progress")

    as_rows = [row.decode("latin-1") if isinstance(row, bytes) else row for row in rows]  # raw lines are not prompts
    counts = assert_exactly_once(out, None, as_rows)
    assert prompts_that_got_candidates(counts) == len(GOOD)
    assert counts["duplicate"] == 3
    skipped = {}
    for outcome in read_jsonl(out.with_name("pairs.outcomes.jsonl"))[1:]:
        if outcome["outcome"] == "skipped":
            skipped[outcome["reason"]] = skipped.get(outcome["reason"], 0) + 1
    assert skipped == {reason: len(items) for reason, items in BAD.items()}
    for reason, items in BAD.items():
        assert f"  {reason}: {len(items)}" in result.stdout
    assert f"rows                 {len(rows)}" in result.stdout
    too_long_reason = "prompt too long for the policy context (256 tokens) with --max-new-tokens 6"
    too_long = [index for index, row in enumerate(rows) if row in BAD[too_long_reason]]
    for index in too_long:  # skipped by a worker, not by the feeder: logged all the same, once
        assert result.stderr.count(f"skipping row {index} ({too_long_reason})") == 1, result.stderr[-3000:]


def test_settings_that_would_waste_a_run_are_refused_before_it(redis_server, tmp_path):
    from conftest import write_jsonl

    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "what is 6 times 7", "answer": "42"}])
    echo = ["--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-backend", "length"]
    cases = [
        (["enqueue", "--redis-url", redis_server.url, *echo, "--reward-model", "verify:exact", "--answer-column", "solution"],
         "error: --answer-column 'solution' is not a column of dataset"),  # a typo would skip every row after all the sampling
        (["enqueue", "--redis-url", redis_server.url, *echo, "--reward-model", "r", "--start", "5"],
         f"error: dataset {str(dataset)!r} has no rows from row 5: nothing to sample"),
        (["run", *echo, "--reward-model", "r", "--out", str(tmp_path / "p.jsonl"), "--generate-workers", "0"],
         "'--generate-workers': 0 is not in the range x>=1"),
        (["enqueue", "--redis-url", redis_server.url, *echo, "--reward-model", "r", "--dtype", "bf16"],
         "error: unknown --dtype 'bf16' (use auto, float32, bfloat16 or float16)"),  # every worker would fail on it, after the run was made
        (["enqueue", "--redis-url", redis_server.url, *echo, "--reward-model", "r", "--trust-remote-code", "org/rm"],
         "error: --trust-remote-code org/rm names no model of this run (its models: echo, r)"),
        (["enqueue", "--redis-url", redis_server.url, *echo, "--reward-model", "r", "--backend", "transformers", "--tensor-parallel-size", "2"],
         "error: --tensor-parallel-size 2 applies to vLLM engines (--backend vllm, --reward-backend vllm): the other backends run a "
         "worker's model on one device"),
    ]
    for args, message in cases:
        result = rsample(*args, check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert rsample("status", "--redis-url", redis_server.url, "--json").stdout.strip() == "[]"  # no run yet, still JSON


def test_the_report_of_a_file_that_is_not_a_pairs_file_says_so(tmp_path):
    from conftest import write_jsonl

    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "hello"}])
    result = rsample("report", str(dataset), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {dataset} row 1 has no 'chosen': it is not a pairs file (give the run's --out file)"
    broken = tmp_path / "broken.jsonl"
    turn = '[{"role": "assistant", "content": "a"}]'
    broken.write_text(f'{{"chosen": {turn}, "rejected": {turn}}}\n{{oops\n')
    result = rsample("report", str(broken), check=False)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {broken} line 2 is not JSON")


def test_an_empty_file_and_a_relative_path_for_a_shared_run_are_named(redis_server, tmp_path):
    import subprocess
    import sys

    from conftest import write_jsonl

    (tmp_path / "empty.json").write_text("\n")
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "hello"}])
    echo = ["--policy", "echo", "--backend", "echo", "--reward-model", "r", "--reward-backend", "length"]
    empty = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(tmp_path / "empty.json"), *echo, check=False)
    assert empty.returncode == 2 and empty.stderr.strip() == f"error: dataset file {tmp_path / 'empty.json'} is empty"
    relative = subprocess.run([sys.executable, "-m", "rsample.producer", "enqueue", "--redis-url", redis_server.url, "--dataset",
                               "rows.jsonl", *echo], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert relative.returncode == 0, relative.stderr
    assert "WARNING relative local path (--dataset rows.jsonl): every worker and `rsample aggregate` will look for it" in relative.stderr


def test_flags_that_would_be_ignored_are_refused(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO, write_jsonl

    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "hello"}, {"messages": None}])
    echo = ["--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-model", "r", "--reward-backend", "length",
            "--out", str(tmp_path / "pairs.jsonl"), "--no-progress"]
    public = rsample("run", *echo, "--public", check=False)
    assert public.returncode == 2 and public.stderr.strip() == "error: --public applies to --push-to-hub, which is not given"
    offline = rsample("run", *echo, "--push-to-hub", "me/pairs", check=False)  # HF_HUB_OFFLINE=1 here
    assert offline.returncode == 2 and offline.stderr.strip().startswith("error: --push-to-hub me/pairs: the Hub is switched off here")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}  # no token anywhere
    env.pop("HF_TOKEN", None)
    tokenless = subprocess.run([sys.executable, "-m", "rsample.producer", "run", *echo, "--push-to-hub", "me/pairs"], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=120)
    assert tokenless.returncode == 2 and tokenless.stderr.strip() == (
        "error: --push-to-hub me/pairs needs a Hugging Face token that may write: set HF_TOKEN or run `hf auth login`")
    assert not (tmp_path / "pairs.jsonl").exists()  # refused before any work
    split = rsample("run", *echo, "--split", "test", check=False)
    assert split.returncode == 2 and f"error: --split test applies to Hub datasets and folders; the file {dataset} is one split" in split.stderr
    done = rsample("run", *echo)
    assert "row 1 (rows.jsonl line 2): 'messages' is null (empty content)" in done.stderr  # not "no messages field", nor "--prompt-column names another"


NO_SYSTEM_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                      "<s>{% for m in messages %}[{{ m['role'] | upper }}]: {{ m['content'] }}</turn>{% endfor %}")


def test_a_reward_template_that_refuses_a_system_turn_skips_those_prompts_and_the_worker_goes_on(tiny_models, tmp_path):
    """As Gemma's template does. The refusal is the data's, not the worker's: most prompts of a batch refused used to
    read as a broken worker, which stopped, and its batches came back skipped as failed."""
    import shutil

    from transformers import AutoTokenizer

    reward = tmp_path / "reward-no-system"
    shutil.copytree(tiny_models["reward"], reward)
    tokenizer = AutoTokenizer.from_pretrained(reward)
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    tokenizer.save_pretrained(reward)
    plain = [{"prompt": f"name a {word}"} for word in ("river", "city", "song")]
    with_system = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"explain {word}"}]}
                   for word in ("music", "code", "tests", "rain", "snow")]
    rows = [*with_system[:3], plain[0], *with_system[3:], *plain[1:]]  # every batch of 4: most of it refused
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "pairs.jsonl"
    result = rsample("run", "--dataset", str(dataset), "--policy", tiny_models["policy"], "--reward-model", str(reward), "--n", "3",
                     "--temperature", "1.0", "--max-new-tokens", "6", "--keep-truncated", "--batch-size", "4", "--out", str(out),
                     "--no-progress")
    assert assert_exactly_once(out, None, rows) == {"skipped": len(with_system), "pair": len(plain)}
    reasons = {o["row_index"]: o["reason"] for o in read_jsonl(out.with_name("pairs.outcomes.jsonl"))[1:] if o["outcome"] == "skipped"}
    assert reasons == {index: f"reward model 0 ({reward}) chat template rejected the conversation: System role not supported"
                       for index, row in enumerate(rows) if "messages" in row}
    assert "retry-failed" not in result.stdout  # the data's, so no retry would change it
    assert "stopped" not in result.stderr, result.stderr[-2000:]
    assert (f"reward model {str(reward)!r}: its chat template refuses 5 of the first 8 prompts (System role not supported): "
            "those are skipped once their completions are generated") in result.stderr  # said before any sampling

    only_system = tmp_path / "system.jsonl"
    only_system.write_text("".join(json.dumps(row) + "\n" for row in with_system))
    refused = rsample("run", "--dataset", str(only_system), "--policy", tiny_models["policy"], "--reward-model", str(reward),
                      "--max-new-tokens", "6", "--out", str(tmp_path / "refused.jsonl"), "--no-progress", check=False)
    assert (refused.returncode, refused.stderr.strip().splitlines()[-1]) == (
        2, f"error: reward model {str(reward)!r}: its chat template refuses every one of the first 5 prompts of dataset "
           f"{str(only_system)!r} (System role not supported), so no prompt could be scored")
    assert not (tmp_path / "refused.jsonl").exists()


def test_a_policy_template_that_refuses_the_system_prompt_is_refused_and_one_that_drops_it_is_said(tiny_models, tmp_path):
    """Gemma 2's template refuses a system turn, which --system-prompt adds to every prompt: the run was made, the workers
    loaded the models, and every prompt was skipped. Phi-3-medium's leaves it out: the output would carry a system
    prompt the policy never saw."""
    import shutil

    from transformers import AutoTokenizer

    def policy_with(template: str, name: str):
        policy = tmp_path / name
        shutil.copytree(tiny_models["policy"], policy)
        tokenizer = AutoTokenizer.from_pretrained(policy)
        tokenizer.chat_template = template
        tokenizer.save_pretrained(policy)
        return policy

    refusing = policy_with(NO_SYSTEM_TEMPLATE, "policy-no-system")
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"name a {word}"}) + "\n" for word in ("river", "city", "song")))
    common = ("--dataset", str(dataset), "--reward-model", tiny_models["reward"], "--n", "2", "--max-new-tokens", "4", "--no-progress")
    refused = rsample("run", *common, "--policy", str(refusing), "--system-prompt", "be brief", "--out", str(tmp_path / "a.jsonl"),
                      check=False)
    assert (refused.returncode, refused.stderr.strip().splitlines()[-1]) == (
        2, f"error: the policy's chat template refuses every one of the first 3 prompts of dataset {str(dataset)!r} "
           "(System role not supported), so nothing could be generated")
    assert not (tmp_path / "a.jsonl").exists()

    # the template refuses the system turn, but no prompt has one: the run goes on, nothing said
    plain = rsample("run", *common, "--policy", str(refusing), "--out", str(tmp_path / "b.jsonl"))
    outcomes = [o["outcome"] for o in read_jsonl(tmp_path / "b.outcomes.jsonl")[1:]]
    assert "chat template" not in plain.stderr and len(outcomes) == 3 and "skipped" not in outcomes

    dropping = policy_with("{% for m in messages %}{% if m['role'] != 'system' %}<|{{ m['role'] }}|>{{ m['content'] }}</turn>"
                           "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}", "policy-drops-system")
    said = rsample("run", *common, "--policy", str(dropping), "--system-prompt", "Answer in French.", "--out", str(tmp_path / "c.jsonl"))
    assert ("the policy's chat template leaves out the system turn ('Answer in French.'): the policy never sees it, while the "
            "output's messages, chosen and rejected carry it") in said.stderr
    assert "leaves out the system turn" not in rsample("run", *common, "--policy", tiny_models["policy"], "--system-prompt",
                                                       "Answer in French.", "--out", str(tmp_path / "d.jsonl")).stderr


MISTRAL_V03_LIKE = (  # Mistral v0.3's (and Nemo's) structure: the system text goes into the last user turn alone
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)


def test_a_template_that_keeps_the_system_turn_only_before_the_answer_is_said(tiny_models, redis_server, tmp_path):
    """Mistral v0.3's template writes the system text into the last user turn only: the policy samples with it, but the
    output's rows, rendered with an answer after that turn (as a trainer does), lose it; a reward model with such a
    template scores without it. Both are said when the run is made; the run's own templates are not."""
    import shutil

    from transformers import AutoTokenizer

    def with_template(model: str, name: str):
        path = tmp_path / name
        shutil.copytree(model, path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.chat_template = MISTRAL_V03_LIKE
        tokenizer.save_pretrained(path)
        rendered = tokenizer.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                                                 tokenize=False)
        assert rendered == "[INST] be brief\n\nhi[/INST]"  # the case: with the user turn last, the system text is there
        return str(path)

    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "name a river"}, {"prompt": "name a city"}])
    policy, reward = with_template(tiny_models["policy"], "mistral-like-policy"), with_template(tiny_models["reward"], "mistral-like-rm")

    def enqueue(policy_path: str, reward_path: str, *extra: str) -> str:
        return rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", policy_path,
                       "--reward-model", reward_path, "--n", "2", "--max-new-tokens", "8", *extra).stderr

    said = enqueue(policy, reward, "--system-prompt", "be brief")
    assert ("the policy's chat template keeps the system turn ('be brief') only while a user turn is last, as Mistral v0.3's "
            "does: the samples are drawn with it, but a trainer that renders the output's rows (prompt and answer) with this "
            "template leaves it out") in said
    assert (f"reward model {reward!r}: its chat template leaves out the system turn ('be brief') of a conversation with an "
            "answer: it scores the answers without it") in said
    assert "leaves out the system turn" not in said.replace(f"reward model {reward!r}: its chat template leaves out", "")
    quiet = enqueue(tiny_models["policy"], tiny_models["reward"], "--system-prompt", "be brief", "--seed", "1")
    assert "system turn" not in quiet
    assert "system turn" not in enqueue(policy, reward, "--seed", "2")  # no system turn in the prompts: nothing to say


def test_a_template_that_refuses_an_answer_turn_is_not_said_to_drop_the_system_turn(tiny_models, tmp_path, caplog):
    """A template that refuses a conversation ending with an answer says nothing of where it puts the system turn: it was
    said to drop it (the check compared the system text with the empty rendering of a refusal)."""
    import logging
    import shutil

    from transformers import AutoTokenizer

    from rsample.producer.registration import check_policy_template
    from rsample.workers.common.config import DataSelection, RunConfig

    path = tmp_path / "policy"
    shutil.copytree(tiny_models["policy"], path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = (
        "{% if messages[-1]['role'] == 'assistant' %}{{ raise_exception('generation prompts only') }}{% endif %}"
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tokenizer.save_pretrained(path)
    config = RunConfig(run_id="r", data=DataSelection("d"), policy=str(path), reward_models=("rm",))
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]]
    assert "be brief" in tokenizer.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)
    with caplog.at_level(logging.WARNING):
        check_policy_template(config, prompts)
    assert "keeps the system turn" not in caplog.text, caplog.text


def test_rows_the_workers_skip_are_logged_a_few_per_reason_and_counted_beyond(caplog):
    import logging

    from rsample.producer.driver.skip_log import SkipLog
    from rsample.workers.common.messages import SKIPPED, Outcome

    skips = SkipLog(logging.getLogger("rsample.test"), per_reason=2)
    skips.say([Outcome(row, f"p{row}", SKIPPED, "prompt longer than the policy context") for row in range(5)]
              + [Outcome(9, "p9", SKIPPED, "generation failed: boom")])
    assert [record.getMessage() for record in caplog.records] == [
        "skipping row 0 (prompt longer than the policy context)", "skipping row 1 (prompt longer than the policy context)",
        "more rows skipped for this reason are counted, not logged: prompt longer than the policy context",
        "skipping row 9 (generation failed: boom)"]


def test_bad_rows_are_logged_a_few_per_reason_by_the_feeder_too(tmp_path):
    """A file of 10,000 empty rows printed 10,000 warnings; the feeder now logs as the collector does."""
    from conftest import write_jsonl

    rows = [{"prompt": f"question {i}"} for i in range(4)] + [{"prompt": ""}] * 30
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    result = rsample("run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--n", "2", "--reward-model", "r",
                     "--reward-backend", "length", "--out", str(tmp_path / "pairs.jsonl"), "--no-progress")
    skips = [line for line in result.stderr.splitlines() if "feeder: skipping" in line]
    reasons = {line.rsplit("(", 1)[1].rstrip(")") for line in skips}
    assert len(skips) == 20 and len(reasons) == 1, result.stderr  # defaults.SKIPS_LOGGED_PER_REASON
    [reason] = reasons
    assert result.stderr.count(f"more rows skipped for this reason are counted, not logged: {reason}") == 1
    assert f"  {reason}: 30" in result.stdout


def test_new_tokens_that_fill_the_policys_context_are_refused_when_the_run_is_made(tiny_models, tmp_path):
    """`rsample make-tiny-models` builds a policy of 256 tokens of context, and --max-new-tokens defaults to 256: every
    prompt was skipped as too long, after the workers had loaded the models, and the run ended with no pair."""
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text(json.dumps({"prompt": "name a river"}) + "\n")
    out = tmp_path / "pairs.jsonl"
    refused = rsample("run", "--dataset", str(dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["reward"],
                      "--out", str(out), "--no-progress", check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "error: --max-new-tokens 256 leaves no room for a prompt in the policy's context of 256 tokens: give fewer"), refused.stderr
    assert not out.exists()


def test_rows_python_cannot_read_are_skipped_before_and_after_the_rows_checked_at_start(tmp_path):
    """A 5,000-digit number in row 5 (read when the run is made) and a ShareGPT turn spoken by a list in row 1,030
    (read by the feeder, past the 1,000 rows checked at start) each ended the run with a traceback; the second left
    nothing written, and every restart died at the same row."""
    rows = [json.dumps({"prompt": f"question {i}"}).encode() for i in range(1_040)]
    rows[5] = b'{"prompt": "big", "answer": ' + b"9" * 5000 + b"}"
    rows[1_030] = json.dumps({"conversations": [{"from": ["human"], "value": "hi"}]}).encode()
    dataset = tmp_path / "odd.jsonl"
    dataset.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(dataset), "--policy", "p", "--reward-model", "r", "--backend", "echo", "--reward-backend", "length",
            "--n", "2", "--batch-size", "64", "--out", str(out), "--no-progress")
    outcomes = {o["row_index"]: o for o in read_jsonl(out.with_name("pairs.outcomes.jsonl"))[1:]}
    assert sorted(outcomes) == list(range(1_040))
    assert (outcomes[5]["outcome"], outcomes[5]["reason"]) == ("skipped", "invalid JSON")
    assert (outcomes[1_030]["outcome"], outcomes[1_030]["reason"]) == ("skipped", "unknown role")
    assert sorted(json.loads(row)["prompt"] for index, row in enumerate(rows) if index not in (5, 1_030)) == sorted(
        pair["messages"][-1]["content"] for pair in read_jsonl(out))


def test_a_skipped_rows_message_names_its_file_and_line(tmp_path):
    """Row numbers run on across a folder's files and past blank lines: "skipping row 8, message 0: user content is
    empty" left the user to count. Now the message names the file and line as well."""
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"prompt": f"first {i}"}) + "\n\n" for i in range(4)))
    (folder / "b.jsonl").write_text("\n" + json.dumps({"prompt": "second 0"}) + "\n\n\n"
                                    + json.dumps({"messages": [{"role": "user", "content": ""}]}) + "\n{broken\n")
    result = rsample("run", "--dataset", str(folder), "--policy", "echo", "--backend", "echo", "--n", "2", "--reward-model", "r",
                     "--reward-backend", "length", "--out", str(tmp_path / "pairs.jsonl"), "--no-progress")
    assert "skipping row 5 (b.jsonl line 5), message 0: user content is empty (empty content)" in result.stderr, result.stderr
    assert "skipping row 6 (b.jsonl line 6): Expecting property name enclosed in double quotes at column 2 (invalid JSON)" in result.stderr


def test_a_bad_row_fixed_in_place_is_said_to_keep_its_outcome(tmp_path):
    """Output rows are matched to dataset rows by number, so a row skipped unread keeps its outcome when it reads as a
    prompt later; the same command exited 0 without a word, as if the fix had been produced."""
    rows = [json.dumps({"prompt": f"question number {i:04d} " + "x" * 60}) for i in range(1_000)]  # past the fingerprint's 64 KiB
    fixed = rows[900]
    rows[900] = fixed[:-1] + " "  # its closing brace lost, its size kept
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("\n".join(rows) + "\n")
    command = ["run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--n", "2", "--reward-model", "r",
               "--reward-backend", "length", "--out", str(tmp_path / "pairs.jsonl"), "--no-progress"]
    rsample(*command)
    rows[900] = fixed
    dataset.write_text("\n".join(rows) + "\n")
    again = rsample(*command)
    assert ("row 900 (rows.jsonl line 901) was skipped when run " in again.stderr
            and "reads as a prompt now (fixed in place?): its outcome stands" in again.stderr), again.stderr[-2000:]
    assert len(read_jsonl(tmp_path / "pairs.jsonl")) == 999
