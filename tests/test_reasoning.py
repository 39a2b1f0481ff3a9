"""Reasoning policies: `--chat-template-kwargs` reach the policy's template (Qwen3's `enable_thinking`), and with
`--reasoning-end` every reward reads the answer after the thinking, a completion whose thinking never ended is never
the chosen one, and the output keeps the whole completion."""

from __future__ import annotations

import pytest
import torch
from conftest import read_jsonl, rsample, write_jsonl

from rsample.workers.backends.tiny_models import build_policy
from rsample.workers.backends.transformers_generation import TransformersGenerator
from rsample.workers.common.config import DataSelection, RunConfig, SamplingConfig
from rsample.workers.common.errors import RsampleError
from rsample.workers.common.messages import DROPPED_UNFINISHED, PAIR, Candidate, GeneratedBatch, GeneratedPrompt, PromptRecord
from rsample.workers.common.reasoning import answer_part
from rsample.workers.stages.aggregate import aggregate_batch
from rsample.workers.stages.score import score_isolating_failures

END = "</think>"


@pytest.mark.parametrize(("text", "answer"), [
    ("<think>\nIs it 5? No.\n</think>\n\nThe answer is 7.", "The answer is 7."),
    ("Is it 5? No.\n</think>\n\n7", "7"),  # DeepSeek-R1: the template opened the reasoning, the completion only closes it
    ("<think>a</think>b</think> c", "c"),  # the last marker ends it, as the models' own templates split a message
    ("<think>still thinking about 5", "<think>still thinking about 5"),  # never ended: judged as it stands
    ("<think>done</think>  ", ""),
    ("no reasoning at all", "no reasoning at all"),
])
def test_the_answer_is_what_follows_the_last_end_marker(text, answer):
    assert answer_part(text, END) == answer
    assert answer_part(text, None) == text


def record(pid: str, row: int) -> PromptRecord:
    return PromptRecord(pid, [{"role": "user", "content": f"question {pid}"}], row_index=row)


class RecordingReward:
    """Scores a conversation by the length of its last message, and remembers what it was given."""

    def __init__(self):
        self.seen: list[str] = []

    def score(self, conversations):
        self.seen += [c[-1]["content"] for c in conversations]
        return [float(len(c[-1]["content"])) for c in conversations]


def test_rewards_read_the_answer_and_only_finished_reasoning_is_chosen():
    texts = [
        "<think>short</think>a long and careful answer",  # the best answer
        "<think>" + "endless thinking " * 8,  # the longest text, but its thinking never ended: never chosen
        "<think>a long detour through many ideas</think>ok",  # long reasoning, short answer: the worst answer
        "<think>nothing to say</think>",  # an empty answer: never chosen
    ]
    candidates = [Candidate(text, [i], num_tokens=len(text)) for i, text in enumerate(texts)]
    prompt = GeneratedPrompt(record("p", 0), candidates, len(texts))
    reward = RecordingReward()
    verdicts = score_isolating_failures(reward, 0, [prompt], END)
    assert reward.seen == ["a long and careful answer", texts[1], "ok", ""]
    assert verdicts["p"]["scores"] == [25.0, float(len(texts[1])), 2.0, 0.0]

    config = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",), reasoning_end=END)
    outcome = aggregate_batch(config, GeneratedBatch("b", [prompt]), [verdicts])
    row = outcome.rows[0]
    assert row["chosen"][-1]["content"] == texts[0]  # the output keeps the thinking
    assert row["rejected"][-1]["content"] == texts[3]
    assert (row["chosen_score"], row["rejected_score"]) == ({"rm": 25.0}, {"rm": 0.0})

    unfinished = GeneratedPrompt(record("q", 1), candidates[1:2] + [Candidate("<think>and on and on", [1])], 2)
    outcome = aggregate_batch(config, GeneratedBatch("c", [unfinished]), [score_isolating_failures(RecordingReward(), 0, [unfinished], END)])
    assert [o.outcome for o in outcome.outcomes] == [DROPPED_UNFINISHED]


def test_a_reference_without_reasoning_may_be_chosen():
    reference = Candidate("Paris.", [2], is_reference=True, finish_reason="reference")
    candidates = [Candidate("<think>hmm</think>Lyon", [0]), Candidate("<think>" + "hmm " * 20, [1]), reference]
    prompt = GeneratedPrompt(record("p", 0), candidates, 3)
    scores = {"p": {"scores": [1.0, 0.0, 2.0], "skip_reason": None}}
    config = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",), reasoning_end=END)
    outcome = aggregate_batch(config, GeneratedBatch("b", [prompt]), [scores])
    assert [o.outcome for o in outcome.outcomes] == [PAIR]
    assert outcome.rows[0]["chosen"][-1]["content"] == "Paris."


def test_settings_added_later_leave_older_runs_ids_unchanged():
    plain = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",))
    settings = plain.output_settings()
    assert "reasoning_end" not in settings and "chat_template_kwargs" not in settings["sampling"]
    thinking = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",), reasoning_end=END,
                         sampling=SamplingConfig(chat_template_kwargs={"enable_thinking": True}))
    assert thinking.output_settings()["reasoning_end"] == END
    assert thinking.output_settings()["sampling"]["chat_template_kwargs"] == {"enable_thinking": True}
    assert RunConfig.from_json(thinking.to_json()) == thinking


def test_template_kwargs_may_not_override_how_the_prompt_is_rendered():
    with pytest.raises(RsampleError, match="may not set add_generation_prompt, messages, tokenize"):
        SamplingConfig(chat_template_kwargs={"tokenize": True, "add_generation_prompt": False, "messages": [], "enable_thinking": False})


def test_a_marker_with_spaces_around_it_is_refused():
    with pytest.raises(RsampleError, match=r"--reasoning-end ' </think>\\n' has spaces or line breaks around it.*give '</think>'"):
        RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",), reasoning_end=" </think>\n")


QWEN3_LIKE = (  # the generation prompt of Qwen3's template: with enable_thinking=false, an empty thought is written for the model
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def thinking_policy(tmp_path_factory):
    from transformers import AutoTokenizer

    path = build_policy(tmp_path_factory.mktemp("policy") / "qwen3-like", generation_defaults={"top_k": 1}, eos_logit=None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = QWEN3_LIKE
    tokenizer.save_pretrained(path)
    return str(path)


def greedy_oracle(path: str, prompt: list[dict], max_new_tokens: int, **template_kwargs) -> str:
    """Greedy decoding of the prompt as transformers renders it itself, one unpadded sequence."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **template_kwargs)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                                eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    ends = [i for i, token in enumerate(output) if token in eos]
    return tokenizer.decode(output[:ends[0]] if ends else output, skip_special_tokens=True).strip()


def test_the_policy_renders_prompts_with_the_runs_template_kwargs(thinking_policy):
    prompts = [[{"role": "user", "content": "write a poem about the river"}], [{"role": "user", "content": "name a city"}]]
    no_thinking = SamplingConfig(n=2, temperature=1.0, top_k=1, max_new_tokens=12, chat_template_kwargs={"enable_thinking": False})
    results = TransformersGenerator(thinking_policy, "float32").generate(prompts, no_thinking, seed=0)
    for prompt, result in zip(prompts, results):
        expected = greedy_oracle(thinking_policy, prompt, 12, enable_thinking=False)
        assert expected != greedy_oracle(thinking_policy, prompt, 12)  # the kwargs change what the model continues
        assert [c.text for c in result.completions] == [expected, expected]


ECHO = ["--policy", "echo", "--backend", "echo", "--n", "3"]
REWARD = '''
def marks(conversations, rows):
    """The number of '#' in the candidate as the reward sees it."""
    return [float(c[-1]["content"].count("#")) for c in conversations]
'''


def test_a_run_scores_answers_and_writes_whole_completions(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "answer_rewards.py").write_text(REWARD)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    thought = "<think>try # then ## then ###</think>"  # marks in the thinking that the reward must not count
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"{thought}answer"}, {"prompt": "<think>never ends #"}])
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    result = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:answer_rewards:marks", "--reasoning-end", END,
                     "--chat-template-kwargs", '{"enable_thinking": true}', "--out", str(out), "--scores-out", str(scores), "--no-progress")
    by_prompt: dict[str, list] = {}
    for row in read_jsonl(scores):
        by_prompt.setdefault(row["completion"].rsplit(" ", 1)[0], []).append(row["scores"]["fn:answer_rewards:marks"])
    assert sorted(by_prompt[f"{thought}answer"]) == [1.0, 2.0, 3.0]  # echo k appends k marks after the answer
    assert sorted(by_prompt["<think>never ends #"]) == [2.0, 3.0, 4.0]  # no answer: the whole text is judged
    [pair] = read_jsonl(out)
    assert (pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]) == (f"{thought}answer ###", f"{thought}answer #")
    assert "dropped, unfinished" in result.stdout
    report = (tmp_path / "pairs.report" / "report.md").read_text()
    assert "thinking never ended (no '</think>'): 50.0% of 6 samples (6 distinct)" in report  # the run report counts them


def test_bad_template_kwargs_fail_in_one_line(tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "hi"}])
    for value, message in (("{enable_thinking: false}", "not valid JSON"), ('["enable_thinking"]', "must be a JSON object"),
                           ('{"tokenize": true}', "may not set tokenize")):
        result = rsample("enqueue", "--redis-url", "redis://127.0.0.1:1", "--dataset", str(dataset), *ECHO, "--reward-model", "r",
                         "--reward-backend", "length", "--chat-template-kwargs", value, check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_marker_that_decoding_drops_is_refused(tiny_models, redis_server, tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "hi"}])
    common = ["enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", tiny_models["policy"],
              "--reward-model", "r", "--reward-backend", "length", "--max-new-tokens", "16"]
    broken = rsample(*common, "--chat-template-kwargs", '{"tools": 5}', check=False)  # not a list of tools: found now, not in a worker
    assert broken.returncode == 2 and broken.stderr.startswith(
        "error: the policy's chat template fails with --chat-template-kwargs {\"tools\": 5}: TypeError"), broken.stderr
    result = rsample(*common, "--reasoning-end", "<|im_end|>", check=False)  # a special token: skip_special_tokens drops it
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --reasoning-end '<|im_end|>' is a special token of the policy's tokenizer, which decoding leaves out of "
        "completions: no completion would show it"), result.stderr
    assert rsample(*common, "--reasoning-end", END).stdout.strip()  # plain text in this vocabulary: the run is made


def test_a_run_of_a_thinking_policy_without_the_marker_is_warned_about(tmp_path, monkeypatch):
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "<think>hmm</think>answer"}, {"prompt": "plain"}])
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    result = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "r", "--reward-backend", "length", "--out", str(out),
                     "--scores-out", str(scores), "--no-progress")
    warning = ("thinking scored: 3 of 6 samples hold '</think>', and the rewards read their thinking too; a reasoning policy "
               "wants --reasoning-end '</think>'")
    assert f"WARNING {warning}" in result.stderr  # the report's, at the end
    assert f"WARNING rsample.producer.driver.collector: {warning}" in result.stderr  # and the coordinator's, as soon as it shows


def test_a_marker_the_template_already_wrote_into_the_prompt_is_refused(thinking_policy, redis_server, tmp_path):
    """Qwen3 with enable_thinking false writes an empty thinking, closed, into the prompt: no completion holds the
    marker, and with --reasoning-end no candidate could ever be chosen."""
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "hi"}])
    common = ["enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", thinking_policy,
              "--reward-model", "r", "--reward-backend", "length", "--reasoning-end", "</think>", "--max-new-tokens", "16"]
    refused = rsample(*common, "--chat-template-kwargs", '{"enable_thinking": false}', check=False)
    assert (refused.returncode, refused.stderr.strip()) == (2, (
        "error: --reasoning-end '</think>': the policy's chat template closes the thinking in the prompt itself with these "
        "--chat-template-kwargs, so no completion would hold the marker and none could be chosen; leave --reasoning-end out")), refused.stderr
    assert rsample(*common, "--chat-template-kwargs", '{"enable_thinking": true}').stdout.strip()  # it thinks: the run is made


R1_LIKE = QWEN3_LIKE.replace("{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}",
                             "<think>\n")  # DeepSeek-R1's generation prompt opens the thinking for the model


def test_a_sample_starts_with_the_thinking_its_template_opened(thinking_policy, tmp_path):
    """R1's template opens `<think>\\n` in the generation prompt: the completion holds only the closing marker, and an
    SFT trace of it had no opening. The sample is what the template opened, then the completion."""
    import shutil

    from transformers import AutoTokenizer

    from rsample.workers.stages.generate import with_opened_thinking

    path = tmp_path / "r1-like"
    shutil.copytree(thinking_policy, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = R1_LIKE
    tokenizer.save_pretrained(path)
    prompts = [[{"role": "user", "content": "write a poem about the river"}], [{"role": "user", "content": "<think> name a city"}]]
    config = RunConfig(run_id="r", data=DataSelection("d"), policy=str(path), reward_models=("rm",), reasoning_end=END,
                       sampling=SamplingConfig(n=2, temperature=1.0, top_k=1, max_new_tokens=12))
    generator = TransformersGenerator(str(path), "float32")
    results = with_opened_thinking(generator, prompts, generator.generate(prompts, config.sampling, seed=0), config)
    for prompt, result in zip(prompts, results):
        expected = "<think>\n" + greedy_oracle(str(path), prompt, 12)  # the user's own "<think>" is not the template's
        assert [c.text for c in result.completions] == [expected, expected]
    plain = RunConfig(run_id="r", data=DataSelection("d"), policy=thinking_policy, reward_models=("rm",), reasoning_end=END,
                      sampling=config.sampling)
    as_is = TransformersGenerator(thinking_policy, "float32")
    unopened = with_opened_thinking(as_is, prompts, as_is.generate(prompts, config.sampling, seed=0), plain)
    for prompt, result in zip(prompts, unopened):  # a template that opens nothing, the user's "<think>" whatever: as it is
        assert [c.text for c in result.completions] == [greedy_oracle(thinking_policy, prompt, 12)] * 2

    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"name a river number {i}"} for i in range(3)])
    scores = tmp_path / "scores.jsonl"
    rsample("run", "--dataset", str(dataset), "--policy", str(path), "--reward-model", "r", "--reward-backend", "length", "--n", "3",
            "--temperature", "1.0", "--top-k", "0", "--max-new-tokens", "8", "--reasoning-end", END, "--sft", "--sft-out",
            str(tmp_path / "sft.jsonl"), "--out", str(tmp_path / "pairs.jsonl"), "--scores-out", str(scores), "--no-progress")
    rows = read_jsonl(scores)
    assert rows and all(row["completion"].startswith("<think>\n") for row in rows)  # through the generation job, as it runs
