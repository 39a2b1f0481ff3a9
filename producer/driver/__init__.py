"""The run's driver: the one coordinator per run that feeds prompts in, collects results, and commits them to the
output files through the ledger; plus `rsample run`'s local set-up, the end-of-run summary and the Hub upload."""
