"""The serving side of rsample, imported as `rsample.workers`: what runs on GPU machines, and what every process shares.

- `common/`: the run's settings, the messages between stages, errors, defaults (imports nothing else of rsample);
- `backends/`: models behind one small interface each, their loading and chat rendering, and the registry;
- `stages/`: the job functions (generate, score) and the pure aggregation logic (dedup, selection, output rows);
- `runtime/`: Redis and RQ (connection, keys, queues, the safe job class), the worker process and its supervisor.

Nothing here imports `rsample.producer`: the dependency runs one way, producer to workers.
"""
