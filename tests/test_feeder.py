"""The producer loop against a real Redis: a bounded window, JSON jobs, a cursor that survives restarts."""

import json
import zlib
from dataclasses import replace

from conftest import write_jsonl

from rsample.producer.driver.ledger import Ledger
from rsample.producer.feeder import Feeder
from rsample.producer.registration import register_run
from rsample.workers.common.config import DataSelection, JobSettings, RunConfig
from rsample.workers.common.messages import PAIR, Outcome
from rsample.workers.runtime.keys import RunKeys


def make_config(dataset, **jobs):
    return RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",), prompts_per_job=2,
                     jobs=JobSettings(**jobs))


def queued_payloads(client, run_id):
    ids = client.lrange(f"rq:queue:{RunKeys(run_id).generate_queue}", 0, -1)
    return [json.loads(zlib.decompress(client.hget(f"rq:job:{i.decode()}", "data"))) for i in ids]


def test_window_json_payloads_and_resumable_cursor(redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    config, existed = register_run(redis_client, make_config(dataset, max_in_flight=4))
    assert not existed and len(config.run_id) == 12
    ledger = Ledger(tmp_path / "out.jsonl", None, config.run_id)
    feeder = Feeder(redis_client, config, ledger)
    assert feeder.top_up() == 4
    assert feeder.top_up() == 0  # the window is full until results come back
    payloads = queued_payloads(redis_client, config.run_id)  # plain JSON: nothing a worker would unpickle
    assert [p[0] for p in payloads] == ["rsample.workers.stages.generate.generate_batch"] * 2
    assert [[prompt["row_index"] for prompt in p[2][2]] for p in payloads] == [[0, 1], [2, 3]]

    redis_client.hincrby(RunKeys(config.run_id).stats, "prompts_returned", 2)  # one batch written
    restarted = Feeder(redis_client, config, ledger)  # a new coordinator process continues at the cursor
    assert restarted.top_up() == 2
    assert [p[2][2][0]["row_index"] for p in queued_payloads(redis_client, config.run_id)] == [0, 2, 4]


def test_rows_already_in_the_ledger_are_not_handed_out_again(redis_client, tmp_path):
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}, "{bad", {"prompt": "c"}]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    config, _ = register_run(redis_client, make_config(dataset))
    ledger = Ledger(tmp_path / "out.jsonl", None, config.run_id)
    from rsample.producer.prompts import extract_prompt

    ledger.commit([Outcome(0, extract_prompt(rows[0], 0).prompt_id, PAIR)], [], [])
    feeder = Feeder(redis_client, config, ledger)
    assert feeder.top_up() == 2
    assert feeder.exhausted
    handed = [p["row_index"] for payload in queued_payloads(redis_client, config.run_id) for p in payload[2][2]]
    assert handed == [1, 4]
    settled = json.loads(redis_client.xrange(RunKeys(config.run_id).ready)[0][1][b"rows"])
    assert [(o["row_index"], o["outcome"]) for o in settled] == [(2, "duplicate"), (3, "skipped")]
    stats = redis_client.hgetall(RunKeys(config.run_id).stats)
    assert stats[b"rows_total"] == b"5" and stats[b"feed_done"] == b"1"


def test_the_same_settings_find_the_same_run(redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}])
    first, _ = register_run(redis_client, make_config(dataset))
    again, existed = register_run(redis_client, replace(make_config(dataset, max_in_flight=9), command="other"))
    assert existed and again.run_id == first.run_id
    other, existed = register_run(redis_client, replace(make_config(dataset), min_margin=1.0))
    assert not existed and other.run_id != first.run_id


def test_a_row_skipped_by_an_older_rsample_that_reads_now_does_not_make_a_later_row_its_duplicate(redis_client, tmp_path):
    """Row 0 ('tools': 'None') was skipped as tool use by an older rsample (outcome: prompt id None); it
    reads now as prompt 'P' and keeps its skip (Ledger.changed tolerates it). Row 1, not fed yet, has the prompt 'P':
    it must be generated, not settled as a duplicate of a row that has no pair."""
    from conftest import write_jsonl

    from rsample.producer.driver.ledger import Ledger
    from rsample.producer.feeder import Feeder
    from rsample.producer.registration import register_run
    from rsample.workers.common.messages import SKIPPED, Outcome
    from rsample.workers.runtime.keys import RunKeys

    rows = [{"prompt": "P", "tools": "None"}, {"prompt": "P", "tools": "None"}]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    config, _ = register_run(redis_client, make_config(dataset))
    ledger = Ledger(tmp_path / "out.jsonl", None, config.run_id)
    ledger.commit([Outcome(0, None, SKIPPED, "tool use")], [], [])  # as the older rsample settled it
    redis_client.hset(RunKeys(config.run_id).stats, "feed_cursor", 1)
    feeder = Feeder(redis_client, config, ledger)
    feeder.top_up()
    ready = redis_client.xrange(RunKeys(config.run_id).ready)
    settled = [(o["row_index"], o["outcome"], o["reason"]) for _, fields in ready for o in json.loads(fields[b"rows"])]
    handed = [p["row_index"] for payload in queued_payloads(redis_client, config.run_id) for p in payload[2][2]]
    assert settled == [] and handed == [1], settled
    ledger.close()
