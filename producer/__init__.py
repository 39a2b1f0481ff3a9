"""The driving side of rsample, imported as `rsample.producer`: what the user starts.

- `cli`: the `rsample` command;
- `dataset`, `prompts`: dataset rows into prompts, or counted skips;
- `registration`: a run's settings stored in Redis under an id;
- `feeder`: prompts into generation jobs, a bounded window at a time;
- `driver/`: the run's one coordinator (feeder + collector + ledger), the local one-command run, summary and Hub upload.

It imports `rsample.workers`, never the other way round.
"""
