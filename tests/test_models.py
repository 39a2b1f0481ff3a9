"""Real tiny models: loading errors, chat templates, skipping too-long prompts, reward scores."""

import shutil

import pytest
import torch

from rsample.workers.backends.models import check_policy, check_reward_model
from rsample.workers.backends.templates import render
from rsample.workers.backends.transformers_generation import TransformersGenerator
from rsample.workers.backends.transformers_reward import TransformersRewardModel
from rsample.workers.common.config import SamplingConfig
from rsample.workers.common.errors import RsampleError


def test_wrong_model_paths_fail_in_one_line(tmp_path):
    with pytest.raises(RsampleError, match="policy model not found: /no/such/model"):
        check_policy("/no/such/model")
    with pytest.raises(RsampleError, match="cannot load reward model 'nobody/no-such-rm'") as info:
        check_reward_model("nobody/no-such-rm")
    assert "\n" not in str(info.value)


def test_a_model_folder_gone_since_the_run_was_made_is_not_found_for_its_tokenizer_too(tmp_path):
    """A worker loads its tokenizer first: a folder removed after `enqueue` (or absent on this machine) was told as
    transformers' "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"."""
    from rsample.workers.backends.models import load_tokenizer

    with pytest.raises(RsampleError, match=f"^policy model not found: {tmp_path}/policyX$"):
        load_tokenizer(str(tmp_path / "policyX"), "policy")


def test_a_mistyped_relative_path_is_told_as_one_not_as_an_unreachable_hub(tmp_path, monkeypatch):
    """`models/rewrd` beside `models/` read as a Hub id: the user was told the Hub could not be reached. The same for a
    dataset, and for a worker started in another folder than the run's relative paths."""
    from rsample.producer.dataset import iter_rows
    from rsample.workers.common.config import DataSelection

    (tmp_path / "models" / "reward").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RsampleError, match=r"cannot load reward model 'models/rewrd': .*\(if a local path was meant: "
                       + str(tmp_path / "models" / "rewrd") + r" does not exist\)$"):
        check_reward_model("models/rewrd")
    with pytest.raises(RsampleError, match=r"cannot load dataset 'models/data' .*\(if a local path was meant: "
                       + str(tmp_path / "models" / "data") + r" does not exist\)$"):
        list(iter_rows(DataSelection("models/data")))
    with pytest.raises(RsampleError, match=r"^reward model not found: models/reward/v2 \(relative to "  # no Hub id has two slashes
                       + str(tmp_path) + r", the folder this runs in\)$"):  # a worker started in another folder: said
        check_reward_model("models/reward/v2")
    with pytest.raises(RsampleError) as hub_id:
        check_reward_model("nobody/no-such-rm")  # no folder `nobody` here: a Hub id, said as one
    assert "local path" not in str(hub_id.value)


def test_a_causal_lm_is_refused_as_reward_model(tiny_models):
    with pytest.raises(RsampleError, match="is not a sequence classifier .*LlamaForCausalLM"):
        check_reward_model(tiny_models["policy"])


def test_tokenizer_without_chat_template_is_refused(tiny_models, tmp_path):
    copy = tmp_path / "no-template"
    shutil.copytree(tiny_models["policy"], copy)
    config = (copy / "tokenizer_config.json")
    config.write_text(config.read_text().replace('"chat_template"', '"unused_template"'))
    for leftover in copy.glob("chat_template.*"):
        leftover.unlink()
    with pytest.raises(RsampleError, match="has no chat template"):
        TransformersGenerator(str(copy))


def test_a_model_folder_without_tokenizer_files_is_refused_with_the_whole_reason(tiny_models, tmp_path):
    """transformers' message announces its list with a colon on a line of its own: the error ended at "one of:"."""
    copy = tmp_path / "no-tokenizer"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_models['policy']}/{name}", copy / name)
    with pytest.raises(RsampleError) as refused:
        TransformersGenerator(str(copy))
    message = str(refused.value)
    assert message.startswith(f"cannot load the tokenizer of policy model {str(copy)!r}: Couldn't instantiate the backend tokenizer from one of: (1) ")
    assert "\n" not in message and "slow tokenizer" in message


LLAMA_3_2_DATE = ('{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}'
                  '{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{%- endif %}'
                  "<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}<|eot_id|>"
                  "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
                  "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def test_a_template_that_reads_the_clock_shows_the_run_s_date_in_every_time_zone(tiny_models, tmp_path, monkeypatch):
    """Llama 3.2's template writes the local date of the process that renders: the same prompt became other tokens on
    workers in other time zones (and another vLLM seed), and the same conversation another reward."""
    import time

    from transformers import AutoTokenizer

    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.template_date import pin_run_date

    dated = tmp_path / "dated"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    tokenizer.chat_template = LLAMA_3_2_DATE
    tokenizer.save_pretrained(dated)
    prompt = [{"role": "user", "content": "What day is it?"}]
    made = 1_790_000_000.0  # 2026-09-21 14:13 UTC
    seen, plain = {}, {}
    try:
        for zone in ("Pacific/Kiritimati", "Etc/GMT+12"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            pin_run_date(made)
            seen[zone] = (render(load_tokenizer(str(dated), "policy"), prompt, {}), render(load_tokenizer(str(dated), "policy"), prompt, {"date_string": "1 Jan 2025"}))
            plain[zone] = AutoTokenizer.from_pretrained(dated).apply_chat_template(prompt, tokenize=False)  # transformers alone
    finally:
        pin_run_date(None)
        monkeypatch.delenv("TZ")
        time.tzset()
    assert len(set(plain.values())) == 2  # UTC+14 and UTC-12 are never on the same date
    (kiritimati, given), (samoa, given_too) = seen.values()
    assert kiritimati == samoa and given == given_too != kiritimati  # --chat-template-kwargs date_string still wins
    decoded = AutoTokenizer.from_pretrained(dated).decode(kiritimati)
    assert "Today Date: 21 Sep 2026" in decoded  # the run's date, in UTC


CLOCK_TEMPLATES = {
    "granite 3": "{%- set today = strftime_now('%B %d, %Y') %}System: Today's Date: {{ today }}.\n"
                 "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    "mistral small 3.1": '{%- set today = strftime_now("%Y-%m-%d") %}[SYSTEM_PROMPT]The current date is {{ today }}.[/SYSTEM_PROMPT]'
                         "{% for m in messages %}[INST]{{ m['content'] }}[/INST]{% endfor %}",
    "gpt-oss": "{%- macro build_system_message() -%}{{- 'Knowledge cutoff: 2024-06\\n' }}{{- 'Current date: ' + strftime_now('%Y-%m-%d') + '\\n\\n' }}"
               "{%- endmacro -%}<|start|>system<|message|>{{- build_system_message() }}<|end|>"
               "{% for m in messages %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>{% endfor %}",
    "in a macro of its own": "{% macro stamp() %}<{{ strftime_now('%A %-d %b %y, %H:%M:%S %Z%z %%d %-l%p %_m %^a %-e') }}>{% endmacro %}"
                             "{% for m in messages %}{{ stamp() }}{{ m['content'] }}{% endfor %}",
    "starting with a newline": "\n{{ strftime_now('%F %T %j %U %e') }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "starting with an indented block": "  {% if true %}{{ strftime_now('%d.%m.') }}{% endif %}\n{% for m in messages %}{{ m['content'] }}{% endfor %}",
}


@pytest.mark.parametrize("name", CLOCK_TEMPLATES)
def test_every_template_that_reads_the_clock_reads_the_run_s_moment(name, tiny_models, tmp_path, monkeypatch):
    """Granite 3's and Mistral Small 3.1's templates put `strftime_now(...)` in their system prompt, not in `date_string`:
    they too must render the moment the run was registered, in UTC, exactly as transformers renders that moment."""
    import datetime

    import transformers.utils.chat_template_utils as chat_template_utils
    from transformers import AutoTokenizer

    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.template_date import pin_run_date

    folder = tmp_path / "clock"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    tokenizer.chat_template = CLOCK_TEMPLATES[name]
    tokenizer.save_pretrained(folder)
    prompt = [{"role": "user", "content": "What day is it?"}]
    made = 1_790_000_000.0  # Monday 2026-09-21 14:13:20 UTC
    try:
        pin_run_date(made)
        ours = load_tokenizer(str(folder), "policy").apply_chat_template(prompt, tokenize=False)
    finally:
        pin_run_date(None)

    class Frozen(datetime.datetime):  # transformers' own strftime_now, its clock stopped at the run's moment (in UTC, naive)
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.fromtimestamp(made, tz=datetime.timezone.utc).replace(tzinfo=None)

    monkeypatch.setattr(chat_template_utils, "datetime", Frozen)
    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(prompt, tokenize=False)
    assert ours == expected
    assert "2026" in expected or "Sep" in expected or "21" in expected  # the frozen clock did reach the template


@pytest.fixture(scope="module")
def generator(tiny_models):
    return TransformersGenerator(tiny_models["policy"])


def test_n_samples_per_prompt_with_policy_chat_template(generator):
    prompt = [{"role": "user", "content": "write a poem"}]
    assert "<|im_start|>assistant" in generator.tokenizer.decode(render(generator.tokenizer, prompt))
    results = generator.generate([prompt, [{"role": "user", "content": "name a city"}]], SamplingConfig(n=5, temperature=1.0, max_new_tokens=12), seed=0)
    assert [len(r.completions) for r in results] == [5, 5]
    assert len({c.text for c in results[0].completions}) > 1  # sampled, not copied
    assert all(1 <= c.num_tokens <= 12 for r in results for c in r.completions)


def test_too_long_prompt_is_skipped_without_shifting_the_others(generator):
    short_a = [{"role": "user", "content": "name a city"}]
    short_b = [{"role": "user", "content": "write code"}]
    too_long = [{"role": "user", "content": "river city " * 200}]
    greedy = SamplingConfig(n=2, temperature=1.0, top_p=1e-6, max_new_tokens=8)  # nucleus of one token: deterministic
    alone = generator.generate([short_a, short_b], greedy, seed=0)
    mixed = generator.generate([short_a, too_long, short_b], greedy, seed=0)
    assert mixed[1].skip_reason.startswith("prompt too long for the policy context (") and mixed[1].completions == []
    assert [c.text for c in mixed[0].completions] == [c.text for c in alone[0].completions]
    assert [c.text for c in mixed[2].completions] == [c.text for c in alone[1].completions]


def test_reward_scores_match_a_direct_forward_pass_with_its_own_template(tiny_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward = TransformersRewardModel(tiny_models["reward"], micro_batch=2)
    conversations = [
        [{"role": "user", "content": "q" * k}, {"role": "assistant", "content": f"answer {k} " * k}] for k in range(1, 6)
    ]
    scores = reward.score(conversations)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["reward"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["reward"], dtype=torch.float32).eval()
    for conversation, score in zip(conversations, scores):
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        assert text.startswith("<s>[USER]: ")  # the reward model's template, not the policy's
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            expected = model(**ids).logits[0, 0].item()
        assert score == pytest.approx(expected, abs=1e-4)


def test_conversation_longer_than_reward_context_gets_no_score(tiny_models):
    reward = TransformersRewardModel(tiny_models["reward"])
    scores = reward.score([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                           [{"role": "user", "content": "river " * 600}, {"role": "assistant", "content": "ok"}]])
    assert scores[0] is not None and scores[1] is None


def test_a_multimodal_checkpoint_keeps_its_language_models_context():
    """Gemma 3's instruct checkpoints load as Gemma3ForConditionalGeneration, whose config holds the limit in text_config."""
    from types import SimpleNamespace

    from transformers import Gemma3Config, GPT2Config, LlamaConfig, Phi3Config

    from rsample.workers.backends.models import context_length

    gemma3 = Gemma3Config(text_config={"max_position_embeddings": 131072, "hidden_size": 64, "num_hidden_layers": 1})
    assert getattr(gemma3, "max_position_embeddings", None) is None  # what the lookup used to read
    unlimited = SimpleNamespace(model_max_length=int(1e30))  # transformers' "no limit" placeholder
    assert context_length(gemma3, unlimited) == 131072
    assert context_length(GPT2Config(n_positions=1024), unlimited) == 1024
    assert context_length(LlamaConfig(max_position_embeddings=8192), SimpleNamespace(model_max_length=4096)) == 4096
    assert context_length(LlamaConfig(max_position_embeddings=8192), unlimited, cap=3000) == 3000  # --max-model-len, any backend
    assert context_length(LlamaConfig(max_position_embeddings=8192), unlimited, engine_limit=4096) == 4096
    # RoPE scaling: a linear or dynamic factor stretches the stated limit; yarn, llama3 and longrope configs state
    # the stretched limit themselves (vLLM 0.32's rule, which transformers' rotary embeddings allow)
    def scaled(limit, **rope):
        return LlamaConfig(max_position_embeddings=limit, rope_parameters={"rope_theta": 10000.0, **rope})

    assert context_length(scaled(4096, rope_type="linear", factor=4.0), unlimited) == 16384
    assert context_length(scaled(4096, rope_type="dynamic", factor=2.0), SimpleNamespace(model_max_length=2048)) == 4096
    assert context_length(scaled(32768, rope_type="yarn", factor=4.0, original_max_position_embeddings=8192), unlimited) == 32768
    assert context_length(scaled(131072, rope_type="llama3", factor=8.0, original_max_position_embeddings=8192,
                                 low_freq_factor=1.0, high_freq_factor=4.0), unlimited) == 131072
    assert context_length(scaled(4096, rope_type="linear", factor=4.0), unlimited, cap=5000) == 5000
    # LongRoPE (Phi-3's 128k): its original limit unless --max-model-len says more, as vLLM's engine defaults to
    half = 3072 // 32 // 2
    phi3 = Phi3Config(max_position_embeddings=131072, original_max_position_embeddings=4096,
                      rope_parameters={"rope_type": "longrope", "short_factor": [1.0] * half, "long_factor": [2.0] * half,
                                       "rope_theta": 10000.0})
    assert context_length(phi3, unlimited) == 4096
    assert context_length(phi3, unlimited, cap=65536) == 65536
