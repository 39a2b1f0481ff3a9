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
