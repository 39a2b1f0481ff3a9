"""Independent computations the tests check rsample against: written from the models' and tokenizers' public
APIs, one unpadded sequence at a time, sharing no code with rsample's backends."""

from __future__ import annotations

import torch


def reward_token_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """The conversation as the reward model sees it: its chat template, tokenized by transformers itself."""
    encoded = tokenizer.apply_chat_template(conversation, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def reference_reward(model, tokenizer, conversation: list[dict]) -> float:
    """The reward where the model's own forward reads the unpadded conversation: its rightmost token that is not the
    config's pad token (the last token when the config has none), the trunk's hidden state there through the score
    head, in float64."""
    ids = reward_token_ids(tokenizer, conversation)
    pad = model.config.pad_token_id
    read_at = max((i for i, token in enumerate(ids) if token != pad), default=0)
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, read_at]
        weight = model.score.weight.double()
        return float(hidden.double() @ weight[0])
