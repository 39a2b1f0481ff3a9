"""--trust-remote-code: a model whose repository code must run loads only when the run names it and the worker
allows it; otherwise the refusal says how to allow it, in one line."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, read_jsonl, rsample, write_jsonl

from rsample.workers.backends.tiny_models import build_reward_model
from rsample.workers.backends.transformers_reward import TransformersRewardModel
from rsample.workers.common.errors import RsampleError

CONFIGURATION = '''
from transformers import LlamaConfig


class RemoteConfig(LlamaConfig):
    model_type = "rsample-remote"
'''
MODELING = '''
from torch import nn
from transformers import LlamaForSequenceClassification, LlamaModel, LlamaPreTrainedModel

from .configuration_remote import RemoteConfig


class RemoteForSequenceClassification(LlamaForSequenceClassification):
    config_class = RemoteConfig

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)  # its own trunk, as remote-code models build theirs
        self.num_labels = config.num_labels
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()
'''
ROWS = [{"prompt": f"write a story about the river number {i}"} for i in range(3)]


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory):
    """A tiny reward model whose architecture lives in its own folder's Python files, as ArmoRM's does on the Hub."""
    root = tmp_path_factory.mktemp("remote")
    plain = build_reward_model(root / "plain", seed=3)
    remote = build_reward_model(root / "remote", seed=3)
    (remote / "configuration_remote.py").write_text(CONFIGURATION)
    (remote / "modeling_remote.py").write_text(MODELING)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="rsample-remote", architectures=["RemoteForSequenceClassification"],
                  auto_map={"AutoConfig": "configuration_remote.RemoteConfig",
                            "AutoModelForSequenceClassification": "modeling_remote.RemoteForSequenceClassification"})
    (remote / "config.json").write_text(json.dumps(config))
    return str(plain), str(remote)


def run_args(dataset, remote, out):
    return ["run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-model", remote, "--n", "3",
            "--out", str(out), "--no-progress"]


def test_a_model_with_its_own_code_is_refused_unless_named(remote_model, tmp_path):
    _, remote = remote_model
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    refused = rsample(*run_args(dataset, remote, tmp_path / "pairs.jsonl"), check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"error: reward model {remote!r} runs code from its repository: name it with "
                                      f"--trust-remote-code {remote} (on the run, and on every worker that loads it)")


def test_named_it_loads_and_scores_as_the_same_weights_do_without_code(remote_model, tmp_path):
    plain, remote = remote_model
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / "pairs.jsonl"
    rsample(*run_args(dataset, remote, out), "--trust-remote-code", remote + "/")  # the same folder, spelled otherwise
    pairs = read_jsonl(out)
    assert pairs, "no pair written"
    reference = TransformersRewardModel(plain, "float32")
    for pair in pairs:
        chosen, rejected = reference.score([pair["chosen"], pair["rejected"]])
        assert pair["chosen_score"][remote] == pytest.approx(chosen, abs=1e-5)
        assert pair["rejected_score"][remote] == pytest.approx(rejected, abs=1e-5)


def test_a_worker_runs_the_code_only_if_its_own_command_line_allows_it(remote_model, redis_server, tmp_path):
    _, remote = remote_model
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "echo", "--backend", "echo",
                     "--reward-model", remote, "--n", "3", "--trust-remote-code", remote).stdout.strip()
    worker = subprocess.run([sys.executable, "-m", "rsample.producer", "worker", "reward", "--redis-url", redis_server.url,
                             "--run", run_id, "--burst"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert worker.returncode == 2  # the run's settings in Redis alone never make a worker run a model's code
    assert worker.stderr.strip().splitlines()[-1] == (f"error: reward model {remote!r} runs code from its repository: name it "
                                                     f"with --trust-remote-code {remote} (on the run, and on every worker that loads it)")
    allowed = subprocess.run([sys.executable, "-m", "rsample.producer", "worker", "reward", "--redis-url", redis_server.url,
                              "--run", run_id, "--burst", "--trust-remote-code", remote + "/"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


GATED_MODELING = '''
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class GatedOutput(ModelOutput):
    rewards: torch.FloatTensor = None
    score: torch.FloatTensor = None
    logits: torch.FloatTensor = None


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    """ArmoRM's shape: several objectives, mixed by a gate, at the last token; logits are the gated score, (batch,)."""

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.gating = nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if self.config.pad_token_id is None and input_ids.shape[0] != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        last = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, -1]
        rewards = self.regression_layer(last)
        score = (torch.softmax(self.gating(last), dim=-1) * rewards).sum(dim=1)
        return GatedOutput(rewards=rewards, score=score, logits=rewards if self.config.every_objective else score)
'''


MEAN_POOLED_MODELING = '''
import torch
from torch import nn
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutputWithPast


class MeanPooledRewardModel(LlamaPreTrainedModel):
    """transformers' layout (`model` + a one-output `score`), read otherwise: the mean over all tokens, scaled."""

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, 1, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SequenceClassifierOutputWithPast(logits=10.0 * self.score(hidden.mean(dim=1)))
'''


SCALED_HEAD_MODELING = '''
from torch import nn
from transformers import LlamaForSequenceClassification


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 10 * super().forward(x) - 3


class ScaledHeadRewardModel(LlamaForSequenceClassification):
    """transformers' own forward, and a head of its own: only `__init__` is overridden."""

    def __init__(self, config):
        super().__init__(config)
        self.score = ScaledLinear(config.hidden_size, 1, bias=False)
        self.post_init()
'''


def own_class_model(directory, modeling: str, class_name: str, num_labels: int = 1, **settings) -> str:
    """A reward model of a class of its own, in its folder's Python file, registered for
    `AutoModelForSequenceClassification` as ArmoRM's is on the Hub; the tokenizer and template are the tiny model's."""
    import importlib.util

    import torch

    plain = build_reward_model(directory, seed=4)  # its tokenizer and template; the weights are replaced
    (plain / "modeling_own.py").write_text(modeling)
    spec = importlib.util.spec_from_file_location("modeling_own", plain / "modeling_own.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json.loads((plain / "config.json").read_text())
    from transformers import LlamaConfig

    llama = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "id2label", "label2id")}, num_labels=num_labels)
    for key, value in settings.items():
        setattr(llama, key, value)
    torch.manual_seed(4)
    getattr(module, class_name)(llama).save_pretrained(plain)
    config = json.loads((plain / "config.json").read_text())
    config.update(architectures=[class_name], auto_map={"AutoModelForSequenceClassification": f"modeling_own.{class_name}"})
    (plain / "config.json").write_text(json.dumps(config))
    return str(plain)


def gated_model(directory, every_objective: bool = False) -> str:
    """A reward model of ArmoRM's kind: its own class (no `ForSequenceClassification` in its name), 4 labels."""
    return own_class_model(directory, GATED_MODELING, "LlamaForRewardModelWithGating", num_labels=4, num_objectives=4, every_objective=every_objective)


def assert_scored_as_its_own_forward_does(model_path: str, tmp_path, read_score) -> None:
    """A run's pair scores against the model's own forward on each conversation alone, in float32."""
    import torch
    from oracles import reward_token_ids
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / "pairs.jsonl"
    rsample(*run_args(dataset, model_path, out), "--trust-remote-code", model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pairs = read_jsonl(out)
    assert pairs, "no pair written"
    for pair in pairs:
        for side in ("chosen", "rejected"):
            with torch.no_grad():
                expected = read_score(model(input_ids=torch.tensor([reward_token_ids(tokenizer, pair[side])])))
            assert pair[f"{side}_score"][model_path] == pytest.approx(expected, abs=1e-5)


def test_a_reward_model_of_its_own_class_scores_as_its_own_forward_does(tmp_path):
    assert_scored_as_its_own_forward_does(gated_model(tmp_path / "gated"), tmp_path, lambda output: float(output.score[0]))


def test_a_reward_model_of_its_own_class_with_a_score_head_runs_its_own_forward(tmp_path):
    """Its head looks like transformers' (`score`, one output, beside the trunk), but its forward pools and scales:
    reading the head at the last token, as transformers' classes do, gave other scores and could swap the pair."""
    pooled = own_class_model(tmp_path / "pooled", MEAN_POOLED_MODELING, "MeanPooledRewardModel")
    assert_scored_as_its_own_forward_does(pooled, tmp_path, lambda output: float(output.logits[0, 0]))


def test_a_reward_model_that_returns_several_values_is_refused_at_load(tmp_path):
    several = gated_model(tmp_path / "several", every_objective=True)
    with pytest.raises(RsampleError, match=r"returns logits of shape \(1, 4\) for 1 conversation\(s\); rsample needs one score per conversation"):
        TransformersRewardModel(several, "float32", trust_remote_code=True)


def test_a_subclass_with_a_head_of_its_own_scores_as_its_forward_does(tmp_path):
    """A subclass of a transformers class that keeps its forward but scales its head: reading the head's weights at
    the last token skipped what the head's own forward does."""
    scaled = own_class_model(tmp_path / "scaled", SCALED_HEAD_MODELING, "ScaledHeadRewardModel")
    assert_scored_as_its_own_forward_does(scaled, tmp_path, lambda output: float(output.logits[0, 0]))


def test_a_subclass_that_only_builds_its_own_trunk_keeps_the_batched_reading(remote_model):
    """The trial at load finds the head read at the last token scores as its forward does: batches stay batched."""
    _, remote = remote_model
    assert TransformersRewardModel(remote, "float32", trust_remote_code=True).head is not None
