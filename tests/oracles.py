"""Independent computations the tests check rsample against: written from the models' and tokenizers' public
APIs, one unpadded sequence at a time, sharing no code with rsample's backends."""

from __future__ import annotations

import torch


def reward_token_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """The conversation as the reward model sees it: its chat template, tokenized by transformers itself."""
    encoded = tokenizer.apply_chat_template(conversation, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def reference_reward(model, tokenizer, conversation: list[dict]) -> float:
    """The reward at the conversation's last token: the trunk's last hidden state there, through the score head,
    in float64; no padding, so nothing can be mistaken for it."""
    ids = reward_token_ids(tokenizer, conversation)
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        weight = model.score.weight.double()
        return float(hidden.double() @ weight[0])
