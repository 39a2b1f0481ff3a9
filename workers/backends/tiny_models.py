"""Random-weight models and tokenizers built offline in a second, for tests, benchmarks and smoke runs.

Their scores and completions are noise: they prove that the plumbing works, never data quality. The
policy and the reward model deliberately differ in vocabulary and chat template, as real ones do.
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the a model answer question reward sample prompt data train token best worst pair chosen rejected "
    "list code python write explain why how what when small large fast slow good bad number river city "
    "music story poem science history simple complex step first second third final result value test"
).split()

POLICY_TEMPLATE = (  # refuses two turns of the same role in a row, as many real templates do
    "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REWARD_TEMPLATE = (
    "<s>{% for m in messages %}[{{ m['role'] | upper }}]: {{ m['content'] }}</turn>{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]: {% endif %}"
)


def _corpus(seed: int, lines: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def _tokenizer(vocab_size: int, special: list[str], eos: str, pad: str | None, template: str, seed: int, bos: str | None = None):
    """A byte-level BPE trained on a few KB; with a `bos`, it adds that BOS to plain text as Llama's tokenizers do
    (so rendering a template that already starts with BOS must not add another)."""
    return _tokenizer_from(vocab_size, special, eos, pad, template, _corpus(seed), bos)


def _tokenizer_from(vocab_size: int, special: list[str], eos: str, pad: str | None, template: str, corpus: list[str],
                    bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(corpus, trainer=trainer)
    if bos is not None:
        raw.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, raw.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token=eos, pad_token=pad, bos_token=bos, chat_template=template, padding_side="left"
    )


def _llama_config(vocab_size: int, tokenizer, **overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # vLLM's CPU attention rejects smaller heads
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def build_policy(directory: str | Path, seed: int = 0, max_position_embeddings: int = 256, hidden_size: int = 128, layers: int = 2,
                 generation_defaults: dict | None = None, eos_logit: float | None = 3.0) -> Path:
    """A small Llama causal LM (2 layers by default) with a ChatML template and two EOS ids.

    `generation_defaults` go into its generation_config.json (temperature, top_k, ...), as model authors ship them.
    `eos_logit`: a random model practically never ends a completion by itself; this raises its EOS logit to about
    this value (about 5% a step at temperature 1), so that some completions stop and others are cut off, as with a
    real model. None keeps it random (fixed-length completions, for benchmarks).
    """
    import torch
    from transformers import LlamaForCausalLM

    directory = Path(directory)
    tokenizer = _tokenizer(384, ["<|im_start|>", "<|im_end|>", "<pad>", "<|endoftext|>"], "<|im_end|>", "<pad>", POLICY_TEMPLATE, seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(
        len(tokenizer), tokenizer, max_position_embeddings=max_position_embeddings, hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=hidden_size // 64,
    ))
    # Two EOS ids, as Llama 3 declares (<|eot_id|> and <|end_of_text|>): a completion ends at either.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    if eos_logit is not None:
        _favour_token(model, tokenizer, tokenizer.eos_token_id, eos_logit, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if generation_defaults:
        model.generation_config.do_sample = True  # as authors ship sampling defaults (transformers refuses them otherwise)
        for name, value in generation_defaults.items():
            setattr(model.generation_config, name, value)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _favour_token(model, tokenizer, token_id: int, logit: float, seed: int) -> None:
    """Points the token's output row along the model's mean final hidden state, scaled so its logit is about `logit`
    wherever the hidden state looks like the average one."""
    import torch

    texts = _corpus(seed + 100, 24)
    with torch.no_grad():
        hidden = torch.cat([
            model.model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).last_hidden_state[0] for text in texts
        ])
        mean = hidden.mean(0)
        model.lm_head.weight[token_id] = mean / mean.norm() ** 2 * logit


REWARD_PAD_CHOICES = ("none", "eos", "own")


def build_reward_model(directory: str | Path, seed: int = 1, max_position_embeddings: int = 512, hidden_size: int = 128, layers: int = 2,
                       pad: str = "none", config_pad_token: str | None = None) -> Path:
    """A small Llama sequence classifier (one logit) with its own vocabulary and a chat template that ends every turn
    with the EOS token, and a tokenizer that adds a BOS, as many real reward models ship.

    `pad`: "none" (no pad token, like Llama 3's tokenizer), "eos" (pad token = EOS), "own" (a pad token of its own).
    `config_pad_token`: a token whose id goes into the model config's `pad_token_id` instead of the tokenizer's pad id
    (checkpoints whose config and tokenizer disagree exist; a common word makes the disagreement bite).
    """
    import torch
    from transformers import LlamaForSequenceClassification

    if pad not in REWARD_PAD_CHOICES:
        raise ValueError(f"pad must be one of {REWARD_PAD_CHOICES}")
    directory = Path(directory)
    pad_token = {"none": None, "eos": "</turn>", "own": "<rpad>"}[pad]
    tokenizer = _tokenizer(448, ["<s>", "</turn>", "<rpad>"], "</turn>", pad_token, REWARD_TEMPLATE, seed, bos="<s>")
    torch.manual_seed(seed)
    config = _llama_config(
        len(tokenizer), tokenizer, num_labels=1, max_position_embeddings=max_position_embeddings, hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=hidden_size // 64,
    )
    if config_pad_token is not None:
        config.pad_token_id = tokenizer.convert_tokens_to_ids(config_pad_token)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


HARMONY_TEMPLATE = (  # gpt-oss's structure, cut down: the thinking goes in `thinking`, channel markers in a message are refused
    "<|start|>system<|message|>A tiny test model.\nReasoning: {{ reasoning_effort | default('medium') }}<|end|>"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|start|>developer<|message|># Instructions\n\n{{ m['content'] }}<|end|>"
    "{% elif m['role'] == 'user' %}<|start|>user<|message|>{{ m['content'] }}<|end|>"
    "{% elif m['role'] == 'assistant' %}"
    "{% if '<|channel|>' in m['content'] or ('thinking' in m and '<|channel|>' in m['thinking']) %}"
    "{{ raise_exception('pass the analysis in thinking and the final answer in content, without channel markers') }}{% endif %}"
    "{% if loop.last and not add_generation_prompt %}"
    "{% if 'thinking' in m %}<|start|>assistant<|channel|>analysis<|message|>{{ m['thinking'] }}<|end|>{% endif %}"
    "<|start|>assistant<|channel|>final<|message|>{{ m['content'] }}<|return|>"
    "{% else %}<|start|>assistant<|channel|>final<|message|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)
HARMONY_SPECIAL = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>", "<|endoftext|>"]
HEADER_WORDS = ("assistant", "analysis", "final", "commentary")
BODY_WORDS = ("the", "answer", "model", "good", "river", "city")


def build_harmony_policy(directory: str | Path, seed: int = 0, answer_share: float = 0.4) -> Path:
    """A policy that writes the harmony format of gpt-oss, as a real one does: channels whose names and texts follow
    special markers, and three EOS ids (`<|return|>`, `<|call|>`, `<|endoftext|>`).

    A random model would never write that structure, so this one is a chain over tokens: each layer adds nothing, and
    the output head reads the current token alone (one-hot embeddings). After `<|channel|>` comes `final` with
    probability `answer_share` (else `analysis`); a message's text is a few words, ended by `<|end|>` (another message
    follows) or `<|return|>` (the completion ends). So completions differ, some answer, some only think."""
    import math

    import torch
    from transformers import LlamaForCausalLM

    directory = Path(directory)
    headers = [word for word in HEADER_WORDS for _ in range(300)]  # each alone on a line: one token without a leading space
    tokenizer = _tokenizer_from(512, HARMONY_SPECIAL, "<|return|>", "<|endoftext|>", HARMONY_TEMPLATE, _corpus(seed) + headers)
    ids = {word: _single_token(tokenizer, word) for word in HEADER_WORDS}
    words = [_single_token(tokenizer, f" {word}") for word in BODY_WORDS]
    marker = {name: tokenizer.convert_tokens_to_ids(name) for name in HARMONY_SPECIAL}
    chain = {
        ids["assistant"]: {marker["<|channel|>"]: 1.0},
        marker["<|start|>"]: {ids["assistant"]: 1.0},
        marker["<|channel|>"]: {ids["final"]: answer_share, ids["analysis"]: 1 - answer_share},
        ids["analysis"]: {marker["<|message|>"]: 1.0},
        ids["final"]: {marker["<|message|>"]: 1.0},
        marker["<|message|>"]: {word: 1 / len(words) for word in words},
        **{word: {**{other: 0.7 / len(words) for other in words}, marker["<|end|>"]: 0.2, marker["<|return|>"]: 0.1} for word in words},
        marker["<|end|>"]: {marker["<|start|>"]: 1.0},
    }
    hidden = 64
    assert len(chain) < hidden
    config = _llama_config(len(tokenizer), tokenizer, hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=1, num_key_value_heads=1, head_dim=64)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # the layers add nothing to the stream: the head sees the token's own embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, hidden - 1] = 1.0  # tokens off the chain: one state of their own
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.fill_(-40.0 / math.sqrt(hidden))
        for state, (token, successors) in enumerate(chain.items()):
            model.model.embed_tokens.weight[token].zero_()
            model.model.embed_tokens.weight[token, state] = 1.0
            for successor, probability in successors.items():  # RMS norm makes a one-hot row sqrt(hidden) long
                model.lm_head.weight[successor, state] = math.log(probability) / math.sqrt(hidden)
    model.generation_config.eos_token_id = [marker["<|return|>"], marker["<|call|>"], marker["<|endoftext|>"]]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens in this vocabulary, not one")
    return ids[0]
