"""Every tunable bound of the pipeline, in one place, each with the reason for its value."""

KEY_PREFIX = "rsample"
"""Namespace of every Redis key and queue, so a shared Redis keeps runs apart from other apps."""

MAX_PROMPT_TOKENS = 4096
"""Longest prompt (in policy tokens) that is sampled: one 100k-token prompt would pad its whole batch into
out-of-memory on a long-context policy. Longer prompts are skipped and counted; raise it with --max-prompt-tokens."""

PROMPTS_PER_JOB = 16
"""Prompts per generation job: large enough to give the engine a real batch, small enough to retry cheaply."""

REWARD_MICRO_BATCH = 128
"""Most conversations in one reward forward pass: a cap for very short ones, which the token budget would pack by thousands."""

REWARD_TOKEN_BUDGET = 16384
"""Padded tokens in one reward forward pass (conversations times the longest of them), halved for good on out-of-memory:
an 8B model's activations for this many tokens take a few GiB, and fewer leave a large GPU idle between launches."""

GENERATION_JOB_TIMEOUT = 3 * 3600
"""Seconds a generation job may run: n x max_new_tokens x prompts can take long (RQ's 180 s default is far too short)."""

SCORE_JOB_TIMEOUT = 3600
"""Seconds a reward-scoring job may run."""

JOB_RETRIES = 2
"""Retries of a failed job before it lands in RQ's failed registry and its prompts are counted as skipped."""

RESULT_TTL = 0
"""Finished jobs are deleted at once: their effects are in Redis already, and Redis memory must not grow with the dataset."""

JOB_HEARTBEAT_TTL = 60
"""Seconds a running job stays claimed without a heartbeat from its worker: a killed worker's job is requeued after this."""

MAX_IN_FLIGHT = 4096
"""Prompts handed to workers but not yet written: bounds Redis memory whatever the dataset size.
Keep it above (generation workers x --batch-size x 2) so that no worker waits for work."""

REAPER_INTERVAL = 5.0
"""Seconds between the coordinator's sweeps for jobs abandoned by dead workers."""

WORKER_TTL = 30
"""RQ's worker TTL: an idle worker heartbeats every 15 s (RQ waits on its queues TTL - 15 s at a time), so that it
registers again soon after a Redis that restarted empty, and a worker killed unseen leaves `rsample status` and
rq-dashboard 90 s later (TTL + 60 s) instead of RQ's default 8 minutes."""

WORKER_MAINTENANCE_INTERVAL = 60
"""Seconds between a worker's own RQ maintenance (registry and intermediate-queue cleanup)."""

REDIS_RETRY_BACKOFF_CAP = 5.0
"""Longest wait, in seconds, between two attempts to reach a Redis that went away."""

FAILED_TTL = 7 * 24 * 3600
"""Seconds a failed job stays inspectable in the failed registry (and rq-dashboard)."""

RUN_TTL = 30 * 24 * 3600
"""Seconds a finished run's settings and counters stay in Redis for `rsample status`."""

AGGREGATOR_READ_COUNT = 64
"""Ready messages (batches) the aggregator takes per step and commits to disk with one fsync per file."""

AGGREGATOR_BLOCK_MS = 500
"""How long the aggregator blocks on the ready stream before feeding, sweeping and refreshing progress."""

REDIS_CONNECT_TIMEOUT = 5
"""Seconds to wait for a Redis connection before saying it is unreachable."""

REWARD_PASS_COST = 1024
"""What one reward forward pass costs beyond its padded tokens (kernel launches, host work, a GPU not yet full),
counted in padded tokens: the batch split trades padding against passes by it (`--reward-pass-cost`)."""

RENDER_PROCESSES_START_SECONDS = 300.0
"""How long the render processes may take to start (import transformers, load the tokenizer) before the worker
says they failed."""

RENDER_PROCESSES_CLOSE_SECONDS = 10.0
"""How long a stopping worker waits for its render processes to finish what they render before it kills them."""

REWARD_SLOTS_ON_GPU = 32
"""Jobs a transformers reward worker on a GPU holds at once: while a round of the waiting ones runs, the others
tokenize theirs, so rounds pool about half of them (a job of 16 prompts x n=8 is only 128 sequences). On an H200 the
GPU ran passes all the time with 8 slots, yet 6 % padding (rounds of 4 jobs) against 1.5 % for one global sort
left it at 0.87-0.92 of the direct loop; rounds of 16 jobs pad about as little as the global sort
(`bench/batching_cost.py`). Slots only hold jobs already waiting: a worker that keeps up pools few, at no cost."""

REWARD_ROUNDS_LOG_SECONDS = 60.0
"""How often a reward worker logs how well it feeds its device (rounds, padding, busy time); once more at exit."""

SLOT_DEQUEUE_TIMEOUT = 2
"""Seconds a worker's extra slot waits on an empty queue before it looks again: bounds how long a stop takes."""

HEARTBEAT_JOIN_TIMEOUT = 5.0
"""Seconds a finished job waits for its heartbeat thread; one stuck on an absent Redis is left behind (it is a daemon)."""

RESTART_BACKOFF = 1.0
"""Seconds before a dead worker is restarted; doubles with every quick failure in a row."""

RESTART_BACKOFF_CAP = 60.0
"""The longest wait before a supervised worker is restarted."""

QUICK_FAILURE_SECONDS = 60.0
"""A supervised worker that exits this soon after its start did not get going (wrong model path, out of memory while
loading): such exits in a row count towards giving up. A longer life resets the count."""

GIVE_UP_AFTER = 5
"""Quick failures in a row after which a worker is no longer restarted: retrying a broken set-up forever
would hide it."""

STOP_GRACE_SECONDS = 30.0
"""After SIGTERM, how long workers may take to finish their current job before SIGKILL. A job cut short is
requeued by the run's heartbeat check, so killing is safe, only wasteful."""

COORDINATOR_LOCK_SECONDS = 30
"""A coordinator that stops refreshing its run's lock for this long is taken for dead, and another may take over."""

PINNED_RUN_GONE_SECONDS = 300.0
"""How long `rsample workers --run X` waits for its run while Redis no longer holds it (a coordinator makes again a
run that a Redis restarted empty lost, at its next step; a forgotten run never comes back) before it exits."""

RUN_CHECK_SECONDS = 3.0
"""How often `rsample workers` without --run looks for a run to serve, or for the next one once its run is finished."""

SKIPS_LOGGED_PER_REASON = 20
"""Rows the workers skipped that the coordinator logs one by one, per reason; the others are counted in the summary."""

SUPERVISOR_POLL_SECONDS = 0.2
"""How often `rsample workers` looks at its children: a dead worker is noticed within this."""

LOCAL_WORKER_STOP_SECONDS = 15.0
"""How long `rsample run` waits for its own workers to finish after SIGTERM before it kills them."""

EMBEDDED_REDIS_START_SECONDS = 10.0
"""How long an embedded Redis may take to answer its first ping before it counts as failed to start."""

ERROR_LINE_CHARS = 300
"""Longest error text kept in a skip reason or log line: one line a person reads, not a traceback."""

ENGINE_WAIT_POLL_SECONDS = 1.0
"""How often a job waiting on a device that another thread drives (a vLLM engine, a reward model) wakes up, so that
its job timeout can reach it."""

ENGINE_STEP_WARN_SECONDS = 120.0
"""A vLLM engine step (milliseconds to seconds of work) still running after this long is logged, and again at each
multiple: stuck or compiling, it would otherwise leave its worker silent until the job timeout (hours)."""

LIVE_PROGRESS_INTERVAL = 1.0
"""Seconds between two publications of a running job's progress: often enough for a bar, rare enough for Redis."""

LIVE_PROGRESS_STALE = 120.0
"""Seconds after which a running job's progress that was not refreshed is taken for a dead worker's and ignored."""

PACE_INTERVAL = 10.0
"""Seconds between two samples of a run's counters, taken by its coordinator for `rsample status`'s recent pace."""

PACE_WINDOW = 300.0
"""`rsample status` gives rates and the time left over this many of the last seconds (the pace now, not since the
run was made: a run enqueued yesterday, or one that stood still for an hour, is not slow now)."""

PACE_SAMPLES = 64
"""Samples kept per run (10 min at PACE_INTERVAL): more than PACE_WINDOW needs, and a few KiB of Redis."""

PACE_STALE = 60.0
"""A newest sample older than this means no coordinator is sampling: the recent pace is unknown, not zero."""

PACE_MIN_SPAN = 20.0
"""The shortest span of samples a recent pace is computed over (two samples a moment apart say little)."""

VLLM_GPU_MEMORY_UTILIZATION = 0.9
"""Share of a GPU's memory a vLLM engine takes (weights and KV cache) when it has the GPU to itself: vLLM's own default."""

ANSWER_COLUMN = "answer"
"""The dataset column `verify:` rewards read the ground truth from (`--answer-column`)."""

MAX_ROW_COLUMNS_BYTES = 65536
"""Most bytes (as JSON) of the columns a row carries to the reward workers: a larger row is skipped, with its reason."""

RELEASE_TIMEOUT = 2.0
"""Seconds a worker stopped by a second signal spends marking its running jobs abandoned before it exits."""

LOCK_RELEASE_SECONDS = 5.0
"""How long a stopping coordinator tries to give its run's lock up before it exits without (the lock then expires)."""

FUNCTION_FAILURES_IN_A_ROW = 32
"""Calls of a `fn:` reward that fail one after the other before its worker stops for an error in the function: where
jobs hold one prompt each, no batch shows that it fails everywhere."""

MATH_CHECK_SECONDS = 5
"""math-verify's limit for one parse or comparison of `verify:math` (its own default); its child process is killed past
three times it."""
LOCAL_WORKER_REDIS_WAIT = 300
"""Seconds a worker `rsample run` starts waits for a Redis it cannot reach at its start (one restarting: the coordinator
waits through such outages too) before it gives up, and the run with it."""
JUDGE_LEAST_RATING_SHARE = 0.5
"""Below this share of a judge's next-token probability on the ratings (on a trial conversation, at load), its worker
warns that the judge may not answer with a rating where it is read."""
MATH_CHECK_START_SECONDS = 120
"""How long `verify:math`'s child process may take to start (importing sympy on a loaded machine)."""

UNSERVED_GRACE = 120.0
"""Seconds jobs may wait with no worker for their queue before the coordinator says so (a worker registers once its
models are loaded, which takes a minute or more for large ones)."""
UNSERVED_REPEAT = 300.0
"""Seconds between the coordinator's reminders while no worker serves a queue that has jobs."""
