"""Random-weight models of a real architecture's shape, built in seconds on the machine that runs them (no network).

Throughput depends on the shape (layers, width, heads, vocabulary), not on what the weights learned, so a
randomly initialised Llama-3.2-1B-shaped model costs what the real one costs per token. Its tokenizer is a
word-level vocabulary that covers every one of the model's ids: whatever id a random model samples decodes
to a word, and the reward model reads that word back as one token, so completions keep their full length
(a small trained BPE would decode most sampled ids to nothing, and the reward model would score stubs).
"""

from __future__ import annotations

from pathlib import Path

from rsample.workers.backends.tiny_models import POLICY_TEMPLATE, REWARD_TEMPLATE, WORDS

SHAPES = {
    "llama-3.2-1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, rope_theta=500000.0, tie_word_embeddings=True,
    ),
    "tiny": dict(  # the CPU dry run's: same code path, seconds instead of minutes
        vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, tie_word_embeddings=True,
    ),
}
CONTEXT = 2048
ROLE_WORDS = ["user", "assistant", "system", "[USER]:", "[ASSISTANT]:", "[SYSTEM]:"]


def word_tokenizer(vocab_size: int, special: list[str], eos: str, pad: str | None, template: str, bos: str | None = None):
    """Whitespace-split words, one id each, filling the whole vocabulary: the specials, the role names the chat
    templates write, plain words and numbers, then `w<i>` words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [*special, "<unk>", *ROLE_WORDS, *dict.fromkeys(WORDS), *map(str, range(1000))]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    raw = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.add_special_tokens(special)
    if bos is not None:  # adds a BOS to plain text, as Llama's tokenizers do
        raw.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, raw.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token=eos, pad_token=pad, bos_token=bos, unk_token="<unk>", chat_template=template,
        padding_side="left", model_max_length=CONTEXT,
    )


def _config(shape: str, tokenizer, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(
        **SHAPES[shape], max_position_embeddings=CONTEXT, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, **overrides,
    )


def build_shaped_policy(directory: Path, shape: str, device: str, seed: int = 0) -> Path:
    """A causal LM with a ChatML template and two EOS ids (as Llama 3 declares), saved in bfloat16."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = word_tokenizer(SHAPES[shape]["vocab_size"], ["<|im_start|>", "<|im_end|>", "<pad>", "<|endoftext|>"],
                               "<|im_end|>", "<pad>", POLICY_TEMPLATE)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(_config(shape, tokenizer), dtype=torch.bfloat16)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_shaped_reward_model(directory: Path, shape: str, device: str, seed: int = 1) -> Path:
    """A one-logit sequence classifier whose tokenizer adds a BOS, has no pad token and ends every turn with EOS."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = word_tokenizer(SHAPES[shape]["vocab_size"], ["<s>", "</turn>"], "</turn>", None, REWARD_TEMPLATE, bos="<s>")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(_config(shape, tokenizer, num_labels=1), dtype=torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main(argv=None) -> None:
    """Builds both models into a folder, for benchmarks that take model paths (`pipeline_overhead.py --policy`)."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-1b")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(build_shaped_policy(args.directory / "policy", args.shape, device))
    print(build_shaped_reward_model(args.directory / "reward", args.shape, device))


if __name__ == "__main__":
    main()
