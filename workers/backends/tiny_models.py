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


def _tokenizer(vocab_size: int, special: list[str], eos: str, pad: str, template: str, seed: int, bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(_corpus(seed), trainer=trainer)
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


def build_policy(directory: str | Path, seed: int = 0, max_position_embeddings: int = 256, hidden_size: int = 128, layers: int = 2) -> Path:
    """A small Llama causal LM (2 layers by default) with a ChatML template."""
    import torch
    from transformers import LlamaForCausalLM

    directory = Path(directory)
    tokenizer = _tokenizer(384, ["<|im_start|>", "<|im_end|>", "<pad>"], "<|im_end|>", "<pad>", POLICY_TEMPLATE, seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(
        len(tokenizer), tokenizer, max_position_embeddings=max_position_embeddings, hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=hidden_size // 64,
    ))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_reward_model(directory: str | Path, seed: int = 1, max_position_embeddings: int = 512, hidden_size: int = 128, layers: int = 2) -> Path:
    """A small Llama sequence classifier (one logit) with its own vocabulary and chat template."""
    import torch
    from transformers import LlamaForSequenceClassification

    directory = Path(directory)
    tokenizer = _tokenizer(448, ["<s>", "</turn>", "<rpad>"], "</turn>", "<rpad>", REWARD_TEMPLATE, seed, bos="<s>")
    torch.manual_seed(seed)
    config = _llama_config(
        len(tokenizer), tokenizer, num_labels=1, max_position_embeddings=max_position_embeddings, hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=hidden_size // 64,
    )
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
