"""Starting a long-lived worker process: pin the GPU, load the models once, then serve RQ jobs.

RQ's `SimpleWorker` runs jobs in this process (no fork): the forking worker hangs once torch has
run in the parent, and would reload the model for every job.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from workers.errors import RsampleError

log = logging.getLogger(__name__)

ROLES = ("generate", "reward")


def pin_gpu(gpu: str | None) -> None:
    """Must run before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def serve(role: str, redis_url: str, run_id: str | None = None, gpu: str | None = None,
          reward_model_indices: list[int] | None = None, burst: bool = False) -> None:
    pin_gpu(gpu)
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from workers import runtime
    from workers.connection import connect
    from workers.generation_backends import load_generator
    from workers.keys import RunKeys
    from workers.reward_backends import load_reward_backend
    from workers.runs import load_run

    if role not in ROLES:
        raise RsampleError(f"unknown worker role {role!r} (use {' or '.join(ROLES)})")
    client = connect(redis_url)
    config = load_run(client, run_id)
    keys = RunKeys(config.run_id)
    context = runtime.WorkerContext(client=client, config=config)
    started = time.perf_counter()
    if role == "generate":
        context.generator = load_generator(config)
        queues = [keys.generate_queue]
        log.info("loaded policy %s in %.1f s", config.policy, time.perf_counter() - started)
    else:
        indices = reward_model_indices if reward_model_indices is not None else list(range(len(config.reward_models)))
        for index in indices:
            if not 0 <= index < len(config.reward_models):
                raise RsampleError(f"run {config.run_id} has {len(config.reward_models)} reward models; there is no index {index}")
            context.reward_models[index] = load_reward_backend(config, index)
        queues = [keys.score_queue(i) for i in indices]
        log.info("loaded reward models %s in %.1f s", [config.reward_models[i] for i in indices], time.perf_counter() - started)
    runtime.install(context)
    name = f"rsample-{role}-{socket.gethostname()}-{os.getpid()}"
    worker = SimpleWorker(queues, connection=client, serializer=JSONSerializer, name=name)
    log.info("worker %s serving run %s on %s", name, config.run_id, ", ".join(queues))
    worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
