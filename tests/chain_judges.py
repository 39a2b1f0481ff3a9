"""Chain judges: one-layer models whose next token depends on the current token alone (as
`tiny_models.build_harmony_policy` builds), so that their reply is known, and where a judge's rating is read can be
checked against what the judge itself writes."""
import math

import torch
from transformers import LlamaForCausalLM

from rsample.workers.backends.tiny_models import _corpus, _llama_config, _tokenizer_from


def chain_model(tokenizer, chain, directory, hidden=64):
    """`chain`: {token id: {next token id: probability}}; tokens off the chain predict nothing in particular."""
    assert len(chain) < hidden
    config = _llama_config(len(tokenizer), tokenizer, hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=1, num_key_value_heads=1, head_dim=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, hidden - 1] = 1.0
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.fill_(-40.0 / math.sqrt(hidden))
        for state, (token, successors) in enumerate(chain.items()):
            model.model.embed_tokens.weight[token].zero_()
            model.model.embed_tokens.weight[token, state] = 1.0
            for successor, probability in successors.items():
                model.lm_head.weight[successor, state] = math.log(probability) / math.sqrt(hidden)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def bytelevel_tokenizer(template, special=("<|im_start|>", "<|im_end|>", "<pad>", "<think>", "</think>")):
    return _tokenizer_from(384, list(special), "<|im_end|>", "<pad>", template, _corpus(0))


def one(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (text, ids)
    return ids[0]


def greedy_reply(path, conversation_text, steps=4):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(conversation_text, add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, ids.shape[1]:])
