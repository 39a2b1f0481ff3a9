"""Worker side of rsample: generation and reward workers, the aggregator, and what they share."""
