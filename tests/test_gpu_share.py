"""`rsample run` on one GPU: a vLLM engine's share of the GPU leaves the reward models beside it room."""

import math
import os

import pytest

from rsample.producer.driver.gpu_share import HEADROOM_BYTES, engine_share_beside, weights_bytes
from rsample.workers.common.errors import RsampleError

GIB = 2**30


def test_a_local_model_is_sized_by_its_weight_files(tiny_models, tmp_path):
    folder = tiny_models["reward"]
    expected = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder) if name.endswith(".safetensors"))
    assert weights_bytes(folder) == expected > 0
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"x" * 1234)
    assert weights_bytes(str(gguf)) == 1234
    (tmp_path / "empty").mkdir()
    with pytest.raises(RsampleError, match="--gpu-memory-utilization"):
        weights_bytes(str(tmp_path / "empty"))


def test_a_hub_model_that_cannot_be_sized_asks_for_the_setting(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RsampleError, match="cannot size reward model 'someone/reward-8b'.*--gpu-memory-utilization"):
        weights_bytes("someone/reward-8b")


def test_the_engine_takes_what_the_reward_models_leave(tmp_path):
    reward = tmp_path / "reward"
    reward.mkdir()
    with (reward / "model.safetensors").open("wb") as handle:  # a sparse 16 GiB file: a reward model's size on disk
        handle.truncate(16 * GIB)
    share = engine_share_beside((str(reward),), "transformers", 80 * GIB)
    assert share == math.floor((0.9 - (16 * GIB + HEADROOM_BYTES) / (80 * GIB)) * 100) / 100 == 0.66
    with pytest.raises(RsampleError, match="GPUs of their own"):
        engine_share_beside((str(reward),) * 4, "transformers", 80 * GIB)  # 4 x 19 GiB: nothing left for the engine
    assert engine_share_beside((str(reward),), "vllm", 80 * GIB) == 0.45  # two engines, equal parts
