"""Locating and loading models: clear one-line errors for wrong paths and wrong model kinds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rsample.workers.backends.template_date import dated
from rsample.workers.common.config import SAMPLING_FIELDS
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.common.paths import missing_here, surely_local


def split_gguf(spec: str) -> tuple[str, str | None]:
    """A `.gguf` file path loads from its folder with `gguf_file=` (transformers' GGUF support)."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return spec, None


def _needs_remote_code(exc: Exception, spec: str, role: str) -> None:
    """transformers refuses a model whose repository code must run: say how to allow it, in one line."""
    if "trust_remote_code" in str(exc):
        raise RsampleError(f"{role} model {spec!r} runs code from its repository: name it with --trust-remote-code {spec} "
                           "(on the run, and on every worker that loads it)") from None


def check_found(spec: str, role: str) -> None:
    """A local model path that is not there, said as such (transformers takes it for a Hub id: "Repo id must be in the
    form 'repo_name' or 'namespace/repo_name'")."""
    path = Path(spec).expanduser()
    if (surely_local(spec) or path.suffix == ".gguf") and not path.exists():
        try:
            relative = "" if path.is_absolute() else f" (relative to {Path.cwd()}, the folder this runs in)"
        except OSError:  # the folder this runs in was removed
            relative = " (relative to the folder this runs in, which no longer exists)"
        raise RsampleError(f"{role} model not found: {spec}{relative}")


def load_model_config(spec: str, role: str, trust_remote_code: bool = False) -> Any:
    """The model's transformers config, or an error that names the role and the path."""
    from transformers import AutoConfig

    check_found(spec, role)
    location, gguf_file = split_gguf(spec)
    try:
        if gguf_file:
            return AutoConfig.from_pretrained(location, gguf_file=gguf_file)
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError, ValueError, HF hub errors: all mean "cannot use this path"
        _needs_remote_code(exc, spec, role)
        raise RsampleError(f"cannot load {role} model {spec!r}: {first_line(exc)}{missing_here(spec)}") from None


def check_policy(spec: str, trust_remote_code: bool = False, reasoning_end: str | None = None, template_kwargs: dict | None = None,
                 max_new_tokens: int | None = None, max_model_len: int | None = None) -> None:
    """The policy loads; a `reasoning_end` survives decoding (and is not asked of a harmony policy, split by channel);
    the template takes the run's `template_kwargs`; `max_new_tokens` leave room for a prompt in its context (else every
    prompt would be skipped as too long once the workers loaded the models: the tiny models' 256 tokens against the
    default 256, say)."""
    config = load_model_config(spec, "policy", trust_remote_code)
    if not (reasoning_end or template_kwargs or max_new_tokens):
        return
    tokenizer = load_tokenizer(spec, "policy", trust_remote_code)
    if template_kwargs:
        from rsample.workers.backends.templates import render

        try:
            render(tokenizer, [{"role": "user", "content": "Hello."}], template_kwargs)  # as the workers will render prompts
        except Exception as exc:
            raise RsampleError(f"the policy's chat template fails with --chat-template-kwargs {json.dumps(template_kwargs)}: "
                               f"{first_line(exc, with_type=True)}") from None
    if reasoning_end:
        from rsample.workers.backends.harmony import HarmonyTokens

        if HarmonyTokens.of(tokenizer) is not None:
            raise RsampleError(f"--reasoning-end {reasoning_end!r}: the policy answers in the harmony format (gpt-oss), whose "
                               "thinking and answer rsample splits by channel by itself; leave --reasoning-end out")
        ids = tokenizer(reasoning_end, add_special_tokens=False)["input_ids"]
        if reasoning_end not in tokenizer.decode(ids, skip_special_tokens=True):
            raise RsampleError(f"--reasoning-end {reasoning_end!r} is a special token of the policy's tokenizer, which decoding "
                               "leaves out of completions: no completion would show it")
        opened = _generation_prompt(tokenizer, template_kwargs)
        if opened is not None and reasoning_end in opened:  # Qwen3's with {"enable_thinking": false}: an empty thinking
            raise RsampleError(f"--reasoning-end {reasoning_end!r}: the policy's chat template closes the thinking in the prompt "
                               f"itself{' with these --chat-template-kwargs' if template_kwargs else ''}, so no completion would "
                               "hold the marker and none could be chosen; leave --reasoning-end out")
    if max_new_tokens and max_new_tokens >= (context := context_length(config, tokenizer, max_model_len)):
        raise RsampleError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the policy's context of {context} tokens: "
                           "give fewer")


def _generation_prompt(tokenizer, template_kwargs: dict | None) -> str | None:
    """What the template adds to a conversation to open the assistant's turn (None where it cannot be told apart)."""
    conversation = [{"role": "user", "content": "Hello."}]
    kwargs = template_kwargs or {}
    try:
        whole = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **kwargs)
        bare = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False, **kwargs)
    except Exception:  # a template that needs more than this: the workers' rendering says what, per prompt
        return None
    return whole[len(bare):] if whole.startswith(bare) else None


def check_reward_model(spec: str, trust_remote_code: bool = False) -> None:
    """Refuses a checkpoint that is not a sequence classifier: loading it would bolt on a random score head. A model
    with its own code (allowed by --trust-remote-code) that registers itself as a sequence classifier passes."""
    config = load_model_config(spec, "reward", trust_remote_code)
    if trust_remote_code and "AutoModelForSequenceClassification" in (getattr(config, "auto_map", None) or {}):
        return  # its own class (ArmoRM's gating model): whatever its name and label count, its output must be one score
    architectures = getattr(config, "architectures", None) or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise RsampleError(
            f"reward model {spec!r} is not a sequence classifier (architectures: {', '.join(architectures) or 'unknown'}); "
            "rsample needs an AutoModelForSequenceClassification reward model"
        )
    if getattr(config, "num_labels", 1) != 1:
        raise RsampleError(f"reward model {spec!r} has {config.num_labels} labels; a reward model has exactly one")


def check_judge_model(spec: str, trust_remote_code: bool = False) -> None:
    """Refuses a sequence classifier (a reward model) named as a judge: one whose embeddings are tied (Llama 3.2 1B's
    and Qwen3 0.6B's reward models) loads as a causal LM with no complaint, its "judgement" an untrained head."""
    from rsample.workers.backends.reward_specs import model_path

    config = load_model_config(model_path(spec), "judge", trust_remote_code)
    architectures = getattr(config, "architectures", None) or []
    if architectures and all(name.endswith("ForSequenceClassification") for name in architectures):
        raise RsampleError(f"judge {spec!r} is a sequence classifier ({', '.join(architectures)}), a reward model: give it as "
                           f"--reward-model {model_path(spec)}, not as a judge")


def resolve_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise RsampleError(f"unknown --dtype {name!r} (use auto, float32, bfloat16 or float16)")
    return dtype


def load_tokenizer(spec: str, role: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_found(spec, role)
    location, gguf_file = split_gguf(spec)
    try:
        if gguf_file:
            tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
        else:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as exc:
        _needs_remote_code(exc, spec, role)
        raise RsampleError(f"cannot load the tokenizer of {role} model {spec!r}: {first_line(exc)}") from None
    if not tokenizer.chat_template:
        raise RsampleError(f"the tokenizer of {role} model {spec!r} has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return dated(tokenizer)


def load_weights(auto_class, spec: str, role: str, dtype, device: str, trust_remote_code: bool = False):
    """Loads weights; refuses a checkpoint whose head would be freshly (randomly) initialised."""
    location, gguf_file = split_gguf(spec)
    kwargs = {"dtype": dtype, "output_loading_info": True, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        model, info = auto_class.from_pretrained(location, **kwargs)
    except Exception as exc:
        _needs_remote_code(exc, spec, role)
        raise RsampleError(f"cannot load {role} model {spec!r}: {first_line(exc)}{missing_here(spec)}") from None
    missing = [key for key in info.get("missing_keys", []) if "score" in key or "classifier" in key or "lm_head" in key]
    if missing:
        raise RsampleError(f"{role} model {spec!r} lacks trained weights for {', '.join(sorted(missing)[:3])}")
    return model.to(device).eval()


def load_generation_config(spec: str):
    """The policy's `generation_config.json` as transformers reads it, or None (a GGUF file, a checkpoint without one)."""
    from transformers import GenerationConfig

    location, gguf_file = split_gguf(spec)
    if gguf_file:
        return None
    try:
        return GenerationConfig.from_pretrained(location)
    except Exception:  # no such file: the policy declares no defaults
        return None


def policy_sampling_defaults(spec: str) -> dict[str, float]:
    """The sampling settings the policy's authors ship (only those its generation_config.json sets)."""
    generation_config = load_generation_config(spec)
    if generation_config is None:
        return {}
    return {name: value for name in SAMPLING_FIELDS if (value := getattr(generation_config, name, None)) is not None}


def policy_eos_ids(spec: str, tokenizer, model_config) -> list[int]:
    """Every token id that ends a completion: the generation config's EOS ids (often several, as Llama 3's) and the
    tokenizer's EOS. A checkpoint without `generation_config.json` (mergekit writes none) declares them in its
    `config.json` (`model_config`, the transformers config), where transformers' `generate` and vLLM both read them."""
    generation_config = load_generation_config(spec)
    if generation_config is not None:
        declared = getattr(generation_config, "eos_token_id", None)
    else:
        declared = getattr(model_config.get_text_config(), "eos_token_id", None)
    ids = set(declared if isinstance(declared, list) else [] if declared is None else [declared])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Names model configs give their position limit (Llama and most; GPT-2; some remote-code models)."""


def context_length(config, tokenizer, cap: int | None = None, engine_limit: int | None = None) -> int:
    """The longest sequence a model of `config` (its transformers config) takes: its position limit, or a smaller sane
    tokenizer limit, or the run's `--max-model-len` (`cap`). Every backend skips by this one number, so that a prompt is
    skipped or kept whatever the backend; a vLLM engine's own limit (`engine_limit`, which counts RoPE scaling) only
    ever lowers it.

    A multimodal checkpoint (Gemma 3, Mistral 3, Qwen2.5-VL) keeps its language model's limit in its text config."""
    config = config.get_text_config()
    limit = next((value for name in POSITION_LIMITS if (value := getattr(config, name, None))), None) or 2048
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < 10**7:
        limit = min(limit, tokenizer_limit)
    limit *= rope_stretch(config)
    if cap is None and (short := longrope_short_limit(config)):  # vLLM's default for LongRoPE, kept on both backends
        limit = min(limit, short)
    return int(min([limit, *(bound for bound in (cap, engine_limit) if bound)]))


STRETCH_ALREADY_COUNTED = {"default", "llama3", "yarn", "longrope", "su", "deepseek_yarn", "deepseek_llama_scaling"}
"""RoPE types whose config states the stretched position limit itself: transformers 5's convention, which vLLM 0.32
follows (`_get_and_verify_max_len`); older vLLM releases multiplied a yarn factor too, whose larger engine limit the
shared context then ignores (both backends take the smaller figure)."""


def _rope_entries(config) -> list[dict]:
    """The config's RoPE parameters, one dict per layer type (Gemma 3 has two)."""
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    per_layer_type = parameters.values() if parameters and "rope_type" not in parameters and "type" not in parameters else [parameters]
    return [entry for entry in per_layer_type if isinstance(entry, dict)]


def longrope_short_limit(config) -> int | None:
    """A LongRoPE model (Phi-3's 128k) runs within its original limit unless `--max-model-len` says more: vLLM's default
    (its short factors, which serve short sequences better), and so the transformers backend's too."""
    if not any(entry.get("rope_type", entry.get("type")) == "longrope" for entry in _rope_entries(config)):
        return None
    original = getattr(config, "original_max_position_embeddings", None) or next(
        (entry["original_max_position_embeddings"] for entry in _rope_entries(config) if entry.get("original_max_position_embeddings")), None)
    return int(original) if original else None


def rope_stretch(config) -> float:
    """How far a linear or dynamic RoPE scaling stretches the position limit: transformers computes the rotary
    embedding for any position, and vLLM counts the factor, so the context is the config's limit times it."""
    if "gemma3" in getattr(config, "model_type", ""):  # its limit is stated stretched, whatever the type
        return 1.0
    factors = [entry.get("factor") or 1.0 for entry in _rope_entries(config)
               if entry.get("rope_type", entry.get("type", "default")) not in STRETCH_ALREADY_COUNTED]
    return float(max(factors, default=1.0))
