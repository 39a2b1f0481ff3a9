"""What a reward worker's batching costs, counted (no model run): padded tokens plus a fixed cost per forward pass,
against one global sort of every conversation, the best any batching can do.

    python bench/batching_cost.py                        # the lengths of bench/reward_throughput.py's default run
    python bench/batching_cost.py --n 8 --prompts-per-job 64

Conversation lengths as `reward_throughput.py` makes them (prompts of 8 to --max-words words, log-uniform, each
echoed back: about 2 x words + 10 tokens with its word-level tokenizer). Compared: every job batched alone or
rounds pooling k jobs (as a reward worker with 2k slots does), split greedily (fill the budget in order) or by
`TokenBudget.plan` (least cost).
"""

from __future__ import annotations

import argparse
import random

from harness import greedy_ends as harness_greedy_ends

from rsample.workers.backends.batching import TokenBudget
from rsample.workers.common import defaults


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--prompts-per-job", type=int, default=defaults.PROMPTS_PER_JOB)
    parser.add_argument("--max-words", type=int, default=160)
    parser.add_argument("--token-budget", type=int, default=defaults.REWARD_TOKEN_BUDGET)
    parser.add_argument("--max-sequences", type=int, default=defaults.REWARD_MICRO_BATCH)
    parser.add_argument("--pass-cost", type=int, default=defaults.REWARD_PASS_COST)
    return parser.parse_args(argv)


def lengths(args) -> list[int]:
    rng = random.Random(0)
    per_prompt = [int(round(8 * (args.max_words / 8) ** rng.random())) for _ in range(args.prompts)]
    return [2 * words + 10 for words in per_prompt for _ in range(args.n)]


def greedy_ends(sorted_lengths: list[int], budget: TokenBudget) -> list[int]:
    return harness_greedy_ends(sorted_lengths, budget.tokens, budget.max_sequences)


def cost(all_lengths: list[int], group: int, split, budget: TokenBudget) -> tuple[int, int]:
    """(padded tokens, passes) when every `group` consecutive conversations are sorted and split together."""
    padded = passes = 0
    for first in range(0, len(all_lengths), group):
        chunk = sorted(all_lengths[first:first + group])
        start = 0
        for end in split(chunk, budget):
            padded += (end - start) * chunk[end - 1]
            passes += 1
            start = end
    return padded, passes


def main(argv=None) -> None:
    args = parse_args(argv)
    budget = TokenBudget(args.token_budget, args.max_sequences, args.pass_cost)
    all_lengths = lengths(args)
    tokens = sum(all_lengths)
    job = args.prompts_per_job * args.n

    def least_cost(chunk, budget):
        return budget.plan(chunk)

    padded, passes = cost(all_lengths, len(all_lengths), greedy_ends, budget)
    baseline = padded + budget.pass_cost * passes
    print(f"{args.prompts} prompts x n={args.n}, {tokens} tokens, jobs of {args.prompts_per_job} prompts ({job} conversations), "
          f"budget {args.token_budget}, at most {args.max_sequences} per pass, {budget.pass_cost} tokens per pass")
    print(f"{'batching':<44}{'padding':>9}{'passes':>8}{'cost / global sort':>20}")
    rows = [("one global sort, greedy (the direct loop)", len(all_lengths), greedy_ends)]
    for jobs in (1, 2, 4, 8, 16):
        rows.append((f"rounds of {jobs} job{'s' if jobs > 1 else ''}, greedy", jobs * job, greedy_ends))
        rows.append((f"rounds of {jobs} job{'s' if jobs > 1 else ''}, least cost", jobs * job, least_cost))
    for name, group, split in rows:
        padded, passes = cost(all_lengths, group, split, budget)
        print(f"{name:<44}{1 - tokens / padded:>9.1%}{passes:>8}{(padded + budget.pass_cost * passes) / baseline:>20.3f}")


if __name__ == "__main__":
    main()
