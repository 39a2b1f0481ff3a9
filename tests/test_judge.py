"""judge:MODEL: the expected rating under the judge's probabilities of the rating tokens, checked against a forward
pass done here by hand; batched and pooled like the reward models, in fp32 and bf16; a broken rubric refused."""

import re

import pytest
import torch
from chain_judges import bytelevel_tokenizer, chain_model, greedy_reply, one
from transformers import AutoModelForCausalLM, AutoTokenizer

from rsample.workers.backends.judge import DEFAULT_TEMPLATE, TransformersJudge, compile_template, judge_texts, reply_opening
from rsample.workers.common.errors import RsampleError

CONVERSATIONS = [
    [{"role": "user", "content": "write a poem about the river"}, {"role": "assistant", "content": "the river runs to the city"}],
    [{"role": "user", "content": "explain why"}, {"role": "assistant", "content": "because the model is small " * 6}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a city"}, {"role": "assistant", "content": "city"}],
    [{"role": "user", "content": "what is a good test"}, {"role": "assistant", "content": "a test that fails when the code is wrong"}],
]
RUBRIC = "Rate the answer to: {{ conversation[-1].content }}\nAnswer: {{ answer }}\nRating:"


def expected_rating(path, conversation, dtype=torch.float32):
    """One conversation alone: the rubric as the judge's user message, its chat template, the next-token distribution."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    question, answer = conversation[-2]["content"], conversation[-1]["content"]
    message = f"Rate the answer to: {question}\nAnswer: {answer}\nRating:"
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probabilities = torch.softmax(model(ids).logits[0, -1].float(), dim=-1)
    digits = [tokenizer.convert_tokens_to_ids(str(r)) for r in range(1, 10)]  # byte-level BPE: a digit is its own token
    p = probabilities[digits]
    return float((p * torch.arange(1, 10)).sum() / p.sum())


def test_the_score_is_the_expected_rating_of_one_forward_pass(tiny_models):
    judge = TransformersJudge(f"judge:{tiny_models['policy']}", "float32", token_budget=256, template=RUBRIC)
    scores = judge.score(CONVERSATIONS)
    assert scores == pytest.approx([expected_rating(tiny_models["policy"], c) for c in CONVERSATIONS], abs=1e-5)
    assert all(1.0 <= s <= 9.0 for s in scores) and len(set(scores)) == len(scores)  # finer than any one rating


def test_bf16_judging_stays_close_to_fp32_and_batches_do_not_change_it(tiny_models):
    spec = f"judge:{tiny_models['policy']}"
    fp32 = TransformersJudge(spec, "float32", template=RUBRIC).score(CONVERSATIONS)
    bf16 = TransformersJudge(spec, "bfloat16", template=RUBRIC).score(CONVERSATIONS)
    one_at_a_time = TransformersJudge(spec, "bfloat16", micro_batch=1, template=RUBRIC).score(CONVERSATIONS)
    assert bf16 == pytest.approx(fp32, abs=0.05)
    assert bf16 == pytest.approx(one_at_a_time, abs=0.02)  # left padding and positions leave each sequence alone


def test_the_default_rubric_renders_the_whole_conversation(tiny_models):
    judge = TransformersJudge(f"judge:{tiny_models['policy']}", "float32")
    prompt = judge.judge_prompt(CONVERSATIONS[2])
    assert prompt[0]["role"] == "user" and "system: be brief" in prompt[0]["content"] and "user: name a city" in prompt[0]["content"]
    assert prompt[0]["content"].rstrip().endswith("a single digit from 1 to 9.") and "[Response]\ncity" in prompt[0]["content"]
    assert DEFAULT_TEMPLATE.count("{{") == 3


def test_a_rubric_that_does_not_render_or_reaches_for_internals_is_refused():
    with pytest.raises(RsampleError, match="--judge-template does not render: 'question' is undefined"):
        compile_template("{{ question }}")
    with pytest.raises(RsampleError, match="--judge-template does not render"):  # the sandbox: no way out to Python
        compile_template("{{ answer.__class__.__mro__[1].__subclasses__() }}")


def test_a_run_judged_by_a_chat_model_writes_its_expected_ratings(tiny_models, tmp_path):
    from conftest import read_jsonl, rsample, write_jsonl

    rubric = tmp_path / "rubric.jinja"
    rubric.write_text(RUBRIC)
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"write a poem about the river number {i}"} for i in range(3)])
    out = tmp_path / "pairs.jsonl"
    judge = f"judge:{tiny_models['policy']}"
    result = rsample("run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-model", judge,
                     "--judge-template", str(rubric), "--n", "3", "--dtype", "float32", "--out", str(out), "--no-progress")
    pairs = read_jsonl(out)
    # a random-weight judge would not answer with a rating: its worker's warning at load reaches the run's console once
    # (it stood in the worker's log alone, out of sight)
    [warned] = [line for line in result.stderr.splitlines() if "on a trial conversation" in line]
    log_text = next((out.parent / ".rsample-logs").rglob("*.log")).read_text()
    share = re.search(r"the ratings 1 to 9 take (\d+\.\d)% of the judge's probability", log_text).group(1)
    assert warned.endswith(f" WARNING rsample.producer.driver.local_run: both worker: {judge}: on a trial conversation, the ratings "
                           f"1 to 9 take {share}% of the judge's probability for the first token of its reply: its rubric or chat "
                           "template may not make it answer with a rating there (a rubric that asks for an explanation first, a judge "
                           "too small), and its scores, read from those shares, would be noise")
    assert pairs
    for pair in pairs:
        assert pair["chosen_score"][judge] == pytest.approx(expected_rating(tiny_models["policy"], pair["chosen"]), abs=1e-5)
        assert pair["rejected_score"][judge] == pytest.approx(expected_rating(tiny_models["policy"], pair["rejected"]), abs=1e-5)
        assert pair["chosen_score"][judge] > pair["rejected_score"][judge]


def sentencepiece_tokenizer(template: str, **special):
    """A Llama 2 / Mistral v0.x style tokenizer: a "▁" prefix piece before the text and digits split one by one."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rsample.workers.backends.tiny_models import _corpus

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    raw.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    raw.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Strip(" ", 1, 0)])
    alphabet = sorted(set("\u25810123456789[]/:.,INSTabcdefghijklmnopqrstuvwxyzR"))
    raw.train_from_iterator(_corpus(3), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=template,
                                   **special)


def sentencepiece_judge(directory):
    """A judge with a Llama 2 / Mistral v0.x style tokenizer, so that encoding "7" alone gives two tokens although the
    model replies with the single piece "7"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = sentencepiece_tokenizer("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    assert len(tokenizer.encode("7", add_special_tokens=False)) == 2  # what made such judges unusable
    torch.manual_seed(3)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                                 num_key_value_heads=1, head_dim=64, bos_token_id=1, eos_token_id=2)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_a_judge_whose_tokenizer_splits_digits_off_a_prefix_piece_reads_the_digit_pieces(tmp_path):
    path = sentencepiece_judge(tmp_path / "mistral-like")
    scores = TransformersJudge(f"judge:{path}", "float32", template=RUBRIC).score(CONVERSATIONS)
    assert scores == pytest.approx([expected_rating(path, c) for c in CONVERSATIONS], abs=1e-5)


def test_a_judge_sure_of_another_token_still_gives_its_expected_rating(tiny_models, tmp_path):
    """A judge that puts nearly all its probability on a token that is no rating (~100 logits above the best digit):
    the ratings' shares are still there in float64, and the score must be theirs, not 0/0."""
    import math

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["policy"], dtype=torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("<|im_start|>")] *= 600
    model.save_pretrained(tmp_path / "sure")
    tokenizer.save_pretrained(tmp_path / "sure")
    judge = TransformersJudge(f"judge:{tmp_path / 'sure'}", "float32", template=RUBRIC)
    expected = []
    for conversation in CONVERSATIONS:
        message = f"Rate the answer to: {conversation[-2]['content']}\nAnswer: {conversation[-1]['content']}\nRating:"
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, -1].double()
        digits = logits[[tokenizer.convert_tokens_to_ids(str(r)) for r in range(1, 10)]]
        assert logits.max() - digits.max() > 90  # the case: in float32, every digit's probability is 0 or subnormal
        weights = [math.exp(value - digits.max()) for value in digits.tolist()]
        expected.append(sum(r * w for r, w in zip(range(1, 10), weights)) / sum(weights))
    assert judge.score(CONVERSATIONS) == pytest.approx(expected, abs=1e-4)


# Where the rating is read, against what chain judges (whose reply is known) write.
TRIAL_CONVERSATION = [{"role": "user", "content": "name a city"}, {"role": "assistant", "content": "the river city"}]
TRIAL_RUBRIC = "Rate the answer to: {{ conversation[-1].content }}\nAnswer: {{ answer }}\nRating:"

# Qwen3's structure, cut down: thinking unless enable_thinking is false, which closes an empty thinking in the prompt
QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and loop.last %}<think></think>{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
    "<think></think>{% endif %}{% endif %}"
)
# DeepSeek-R1's structure, cut down: the generation prompt opens the thinking itself
R1_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def digits_favouring_1(tokenizer, rest):
    """At a position where the judge writes something else, the digits' own (noise) shares: 1 ahead."""
    return {**rest, one(tokenizer, "1"): 0.02, **{one(tokenizer, str(r)): 0.001 for r in range(2, 10)}}


def judge_text(path, template=CHATML):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    message = f"Rate the answer to: {TRIAL_CONVERSATION[0]['content']}\nAnswer: {TRIAL_CONVERSATION[1]['content']}\nRating:"
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)


def test_a_judge_that_thinks_by_default_is_read_after_its_thinking_not_where_it_writes_think(tmp_path):
    """Qwen3 as judge: its template (without enable_thinking=False) makes it write <think> first. The rating must be
    read where the judge writes it, not at the <think> position."""
    tokenizer = bytelevel_tokenizer(QWEN3_LIKE)
    think, end = one(tokenizer, "<think>"), one(tokenizer, "</think>")
    path = chain_model(tokenizer, {
        one(tokenizer, "\n"): digits_favouring_1(tokenizer, {think: 0.97}),
        think: {end: 1.0},
        end: {one(tokenizer, "9"): 0.9, one(tokenizer, "8"): 0.1},
    }, tmp_path / "qwen3-like")
    assert greedy_reply(path, judge_text(path)).startswith("<think></think>9")  # what this judge answers: 9
    score = TransformersJudge(f"judge:{path}", "float32", template=TRIAL_RUBRIC).score([TRIAL_CONVERSATION])[0]
    assert score == pytest.approx(8.9, abs=0.05), f"read at the <think> position: {score:.3f}"


def test_a_judge_whose_template_opens_the_thinking_is_read_after_its_thinking(tmp_path):
    """DeepSeek-R1 (and its distillations, QwQ) as judge: the generation prompt opens the thinking; the first token
    of the reply is thinking, and the rating comes once the thought is closed (which the judge's prompt now does)."""
    tokenizer = bytelevel_tokenizer(R1_LIKE.replace("<think>\n{% endif %}", "<think>{% endif %}"))
    think, word, end, newline = one(tokenizer, "<think>"), one(tokenizer, " the"), one(tokenizer, "</think>"), one(tokenizer, "\n")
    path = chain_model(tokenizer, {
        think: digits_favouring_1(tokenizer, {word: 0.97}),
        word: {end: 1.0},
        end: {newline: 1.0},
        newline: {one(tokenizer, "9"): 0.9, one(tokenizer, "8"): 0.1},
    }, tmp_path / "r1-like")
    assert greedy_reply(path, judge_text(path), steps=4) == " the</think>\n9"  # what this judge answers, once it has thought
    score = TransformersJudge(f"judge:{path}", "float32", template=TRIAL_RUBRIC).score([TRIAL_CONVERSATION])[0]
    assert score == pytest.approx(8.9, abs=0.05), f"read at the first thinking token: {score:.3f}"


LLAMA2_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                   "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")


def llama2_tokenizer():
    """The SentencePiece-style tokenizer above, with Llama 2's chat template, which renders an answer as ' ' + content:
    "7" after [/INST] is the lone "▁" piece, then the digit."""
    return sentencepiece_tokenizer(LLAMA2_TEMPLATE, pad_token="</s>")


def test_a_sentencepiece_judge_is_read_where_its_template_puts_the_digit(tmp_path):
    tokenizer = llama2_tokenizer()
    message = [{"role": "user", "content": "Rate it.\nRating:"}]
    prompt = tokenizer(tokenizer.apply_chat_template(message, tokenize=False), add_special_tokens=False)["input_ids"]
    whole = tokenizer(tokenizer.apply_chat_template([*message, {"role": "assistant", "content": "7"}], tokenize=False),
                      add_special_tokens=False)["input_ids"]
    assert whole[:len(prompt)] == prompt
    first_reply_token = tokenizer.convert_ids_to_tokens(whole[len(prompt)])
    space, seven = tokenizer.convert_tokens_to_ids("\u2581"), tokenizer.convert_tokens_to_ids("7")
    assert whole[len(prompt):len(prompt) + 2] == [space, seven]  # the judge's trained reply "7" starts with "▁"
    last = prompt[-1]
    path = chain_model(tokenizer, {
        last: {space: 0.97, seven: 0.0001, tokenizer.convert_tokens_to_ids("1"): 0.02,
               **{tokenizer.convert_tokens_to_ids(str(r)): 0.001 for r in (2, 3, 4, 5, 6, 8, 9)}},
        space: {seven: 1.0},
    }, tmp_path / "llama2-like")
    assert greedy_reply(path, tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False), steps=2).strip() == "7"
    score = TransformersJudge(f"judge:{path}", "float32", template=TRIAL_RUBRIC).score([TRIAL_CONVERSATION])[0]
    assert score == pytest.approx(7.0, abs=0.05), (
        f"first reply token is {first_reply_token!r}; the digits were read before it: {score:.3f}")


def test_a_rubric_on_another_scale_is_warned_about(caplog):
    """A judge answering "10" puts its probability on "1" in digit-split vocabularies (Qwen's, Llama 2's): the best
    rating read as the worst. The score is read on 1 to 9, so a rubric asking for another scale is said."""
    import logging

    with caplog.at_level(logging.WARNING):
        compile_template("Rate the answer from 1 (poor) to 10 (excellent).\nAnswer: {{ answer }}\nReply with the rating alone:")
        compile_template("Score it out of 100.\n{{ answer }}")
        for wording in ("Rate it on a scale of 1 to 10.", "Score: 1 to 10", "Rate it 1 to 10, 10 being best", "Rating (1 to 10):",
                        "Give a score from 0 to 100", "Grade it 0 through 100"):
            compile_template(f"{{{{ answer }}}}\n{wording}")
    assert caplog.text.count("a judge's score is its expected rating over the single digits 1 to 9") == 8
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        compile_template(None)
        compile_template("Rate from 1 to 9, 10 words at most.\n{{ answer }}")
        compile_template("Apply version 2.1 to 10.5 (or 3.0-100), then rate it from 1 to 9.\n{{ answer }}")
    assert "single digits" not in caplog.text


def test_a_rubric_that_never_shows_the_answer_is_refused():
    """Every candidate of a prompt would get the same score: every prompt dropped as a tie."""
    with pytest.raises(RsampleError, match=r"--judge-template never shows the candidate \(\{\{ answer \}\}\)"):
        compile_template("Rate the answer to: {{ conversation[-1].content }}\nRating (1-9):")


def test_a_sequence_classifier_with_tied_embeddings_is_refused_as_judge(tmp_path):
    """A reward model (Skywork-Reward-V2-Qwen3-0.6B, Llama-3.2-1B-based RMs tie their embeddings) named as judge:
    AutoModelForCausalLM loads its trunk with the embeddings as LM head; nothing about it is a trained judge."""
    from transformers import LlamaForSequenceClassification

    from rsample.workers.backends.tiny_models import _llama_config

    tokenizer = bytelevel_tokenizer(CHATML)
    config = _llama_config(len(tokenizer), tokenizer, num_labels=1, tie_word_embeddings=True)
    config.architectures = ["LlamaForSequenceClassification"]
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    with pytest.raises(RsampleError, match="is a sequence classifier .*, a reward model: give it as --reward-model"):
        TransformersJudge(f"judge:{tmp_path / 'rm'}", "float32", template=TRIAL_RUBRIC)


BATCHED = [
    [{"role": "user", "content": "name a city"}, {"role": "assistant", "content": "city"}],
    [{"role": "user", "content": "write a poem about the river " * 8}, {"role": "assistant", "content": "the river runs " * 12}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "explain why"}, {"role": "assistant", "content": "because"}],
]


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 0.02)])
def test_a_conversation_scores_the_same_alone_and_in_a_batch_with_longer_ones(tiny_models, dtype, tolerance):
    judge = TransformersJudge(f"judge:{tiny_models['policy']}", dtype, template=TRIAL_RUBRIC)
    together = judge.score(BATCHED)
    alone = [judge.score([c])[0] for c in BATCHED]
    assert together == pytest.approx(alone, abs=tolerance)


def test_a_reward_model_named_as_judge_is_refused_when_the_run_is_made(tiny_models, tmp_path):
    from conftest import rsample

    dataset = tmp_path / "rows.jsonl"
    dataset.write_text('{"prompt": "name a city"}\n')
    out = tmp_path / "pairs.jsonl"
    result = rsample("run", "--dataset", str(dataset), "--policy", "p", "--backend", "echo", "--reward-model", f"judge:{tiny_models['reward']}",
                     "--out", str(out), "--no-progress", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: judge 'judge:{tiny_models['reward']}' is a sequence classifier (LlamaForSequenceClassification), a reward model: "
        f"give it as --reward-model {tiny_models['reward']}, not as a judge")
    assert not out.exists()


QWEN3_THINKING_2507_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def test_the_opening_of_a_template_that_opens_the_thought_and_renders_it_closed():
    """Qwen3 Thinking-2507's: its generation prompt opens `<think>\\n`, and a rendered reply closes it before the answer."""
    tokenizer = bytelevel_tokenizer(QWEN3_THINKING_2507_LIKE)
    template = compile_template(TRIAL_RUBRIC)
    opening = reply_opening(tokenizer, template)
    text = judge_texts(tokenizer, template, opening, [TRIAL_CONVERSATION])[0]
    # observed: opening == "" and the text ends with "<think>\n": the rating read where the judge starts thinking
    assert "</think>" in opening, (opening, text[-40:])


def test_a_judge_of_such_a_template_is_read_after_its_thinking(tmp_path):
    tokenizer = bytelevel_tokenizer(QWEN3_THINKING_2507_LIKE.replace("<think>\n{% endif %}", "<think>{% endif %}"))
    think, word, end, newline = one(tokenizer, "<think>"), one(tokenizer, " the"), one(tokenizer, "</think>"), one(tokenizer, "\n")
    path = chain_model(tokenizer, {
        think: {word: 0.97, one(tokenizer, "1"): 0.02, **{one(tokenizer, str(r)): 0.001 for r in range(2, 10)}},
        word: {end: 1.0},
        end: {newline: 1.0},
        newline: {one(tokenizer, "9"): 0.9, one(tokenizer, "8"): 0.1},
    }, tmp_path / "qwen3-thinking-like")
    message = f"Rate the answer to: {TRIAL_CONVERSATION[0]['content']}\nAnswer: {TRIAL_CONVERSATION[1]['content']}\nRating:"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    assert greedy_reply(path, prompt, steps=4).startswith(" the</think>\n")  # it thinks, closes, then rates
    score = TransformersJudge(f"judge:{path}", "float32", template=TRIAL_RUBRIC).score([TRIAL_CONVERSATION])[0]
    assert score > 8.0, f"read at the first thinking token: {score:.3f}"


@pytest.mark.parametrize("digits_first, warned", [(True, False), (False, True)])
def test_a_judge_that_would_not_answer_with_a_rating_is_warned_about_at_load(tmp_path, caplog, digits_first, warned):
    """The score renormalises over the ratings' tokens, so a judge that would write something else where it is read
    (a rubric asking for an explanation first) still gives confident-looking scores: the worker says so once, at load."""
    tokenizer = bytelevel_tokenizer(CHATML)
    newline, word = one(tokenizer, "\n"), one(tokenizer, " the")
    reply = {one(tokenizer, "9"): 0.9, one(tokenizer, "8"): 0.1} if digits_first else digits_favouring_1(tokenizer, {word: 0.97})
    path = chain_model(tokenizer, {newline: reply}, tmp_path / "judge")
    with caplog.at_level("WARNING", logger="rsample.workers.backends.judge"):
        TransformersJudge(f"judge:{path}", "float32", template=TRIAL_RUBRIC)
    warnings = [r.getMessage() for r in caplog.records if "take" in r.getMessage()]
    if not warned:
        assert warnings == []
        return
    # the digits' shares as the chain sets them: 0.02 + 8 × 0.001 of 0.998 (the other tokens' logits are 40 below)
    assert warnings == [f"judge:{path}: on a trial conversation, the ratings 1 to 9 take 2.8% of the judge's probability for the "
                        "first token of its reply: its rubric or chat template may not make it answer with a rating there (a rubric "
                        "that asks for an explanation first, a judge too small), and its scores, read from those shares, would be noise"]
