import pytest

from rsample.workers.common.config import DataSelection, RunConfig, SamplingConfig
from rsample.workers.common.errors import RsampleError


def test_round_trip_through_json():
    config = RunConfig(
        run_id="abc", data=DataSelection("d.jsonl", num_prompts=5), policy="p", reward_models=("r1", "r2"),
        sampling=SamplingConfig(n=8, temperature=0.9), min_margin=0.5, include_reference=True,
    )
    assert RunConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SamplingConfig(n=1), "--n must be at least 2"),
        (lambda: SamplingConfig(temperature=0), "--temperature must be > 0"),
        (lambda: SamplingConfig(top_p=0), "--top-p"),
        (lambda: DataSelection("d", start=5, end=5), "--end"),
        (lambda: RunConfig(run_id="", data=DataSelection("d"), policy="p", reward_models=()), "reward-model"),
        (lambda: RunConfig(run_id="", data=DataSelection("d"), policy="p", reward_models=("r",), combine="max"), "--combine"),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(make, message):
    with pytest.raises(RsampleError, match=message):
        make()


def test_settings_that_change_only_speed_keep_the_run_id_and_those_that_change_output_do_not():
    from dataclasses import replace

    from rsample.producer.registration import run_id_for
    from rsample.workers.common.config import ModelSettings

    base = RunConfig(run_id="", data=DataSelection("d.jsonl"), policy="p", reward_models=("r",))
    faster = ModelSettings(reward_micro_batch=7, reward_token_budget=999, reward_pass_cost=5, tensor_parallel_size=2, gpu_memory_utilization=0.4,
                           enforce_eager=True)
    assert run_id_for(replace(base, models=faster)) == run_id_for(base)
    assert run_id_for(replace(base, models=ModelSettings(dtype="float32"))) != run_id_for(base)
    assert run_id_for(replace(base, models=ModelSettings(max_model_len=512))) != run_id_for(base)  # skips longer prompts
    assert run_id_for(replace(base, sampling=SamplingConfig(n=8))) != run_id_for(base)


def test_a_run_made_before_later_settings_keeps_its_id():
    """Its output files are found by this id: settings added since (prompt and reference columns, reasoning marker,
    template variables) must leave it alone at their defaults. The id was computed by rsample at 57494aa."""
    from rsample.producer.registration import run_id_for

    config = RunConfig(run_id="", data=DataSelection("/data/tulu.jsonl", system_prompt="be kind"), policy="meta-llama/Llama-3.1-8B-Instruct",
                       reward_models=("Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",), sampling=SamplingConfig(n=16, temperature=0.8))
    assert run_id_for(config) == "c3aa978cf62d"
    assert run_id_for(RunConfig(**{**config.__dict__, "data": DataSelection("/data/tulu.jsonl", system_prompt="be kind",
                                                                             prompt_columns=("messages",))})) != "c3aa978cf62d"
