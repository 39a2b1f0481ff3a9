"""judge:MODEL: the expected rating under the judge's probabilities of the rating tokens, checked against a forward
pass done here by hand; batched and pooled like the reward models, in fp32 and bf16; a broken rubric refused."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rsample.workers.backends.judge import DEFAULT_TEMPLATE, TransformersJudge, compile_template
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
    rsample("run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-model", judge,
            "--judge-template", str(rubric), "--n", "3", "--dtype", "float32", "--out", str(out), "--no-progress")
    pairs = read_jsonl(out)
    assert pairs
    for pair in pairs:
        assert pair["chosen_score"][judge] == pytest.approx(expected_rating(tiny_models["policy"], pair["chosen"]), abs=1e-5)
        assert pair["rejected_score"][judge] == pytest.approx(expected_rating(tiny_models["policy"], pair["rejected"]), abs=1e-5)
        assert pair["chosen_score"][judge] > pair["rejected_score"][judge]


def sentencepiece_judge(directory):
    """A judge with a Llama 2 / Mistral v0.x style tokenizer: a "▁" prefix piece before the text and digits split one
    by one, so that encoding "7" alone gives two tokens although the model replies with the single piece "7"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from rsample.workers.backends.tiny_models import _corpus

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    raw.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    raw.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Strip(" ", 1, 0)])
    alphabet = sorted(set("\u25810123456789[]/:.,INSTabcdefghijklmnopqrstuvwxyzR"))
    raw.train_from_iterator(_corpus(3), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet))
    template = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=template)
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
