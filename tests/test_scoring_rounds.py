"""Scoring rounds: jobs waiting while the device works are scored together, each gets its own values in its own
order, a fault fails only its job, a timed-out job is left out, and the device thread ends when idle."""

import threading
import time

import pytest
from rq.timeouts import JobTimeoutException, TimerDeathPenalty

from rsample.workers.backends.batching import TokenBudget
from rsample.workers.backends.scoring_rounds import ScoringRounds


class Device:
    """Scores a sequence as the sum of its ids; can be held at its next batch, and fails on a sequence holding -1."""

    def __init__(self):
        self.batches: list[list[list[int]]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.holding = threading.Event()

    def run_batch(self, batch):
        self.holding.set()
        assert self.hold.wait(30)
        if any(-1 in ids for ids in batch):
            raise ValueError("a bad sequence")
        self.batches.append([list(ids) for ids in batch])
        return [float(sum(ids)) for ids in batch]


def read(per_batch):
    return [value for batch in per_batch for value in batch]


def job(seed: int, count: int) -> list[list[int]]:
    return [[seed] * (1 + (seed * 7 + k * 13) % 23) for k in range(count)]  # lengths in no order


def score_in_threads(rounds, jobs):
    results, errors = [None] * len(jobs), [None] * len(jobs)

    def score(k):
        try:
            results[k] = rounds.score(jobs[k])
        except Exception as exc:
            errors[k] = exc

    threads = [threading.Thread(target=score, args=(k,)) for k in range(len(jobs))]
    for thread in threads:
        thread.start()
    return threads, results, errors


def busy_rounds():
    """Rounds whose device holds its first job until released: the jobs sent meanwhile wait for the next round."""
    device = Device()
    rounds = ScoringRounds(TokenBudget(10_000, 1000), device.run_batch, read)
    device.hold.clear()
    first, first_result, _ = score_in_threads(rounds, [job(1, 5)])
    assert device.holding.wait(10)
    return device, rounds, first, first_result


def test_jobs_waiting_during_a_round_are_sorted_together_into_the_next_and_get_their_own_values():
    device, rounds, first, first_result = busy_rounds()
    jobs = [job(seed, 6) for seed in (2, 3, 4)]
    threads, results, errors = score_in_threads(rounds, jobs)
    time.sleep(0.5)  # all three are waiting
    device.hold.set()
    for thread in [*first, *threads]:
        thread.join(30)
    assert first_result[0] == [float(sum(ids)) for ids in job(1, 5)] and errors == [None] * 3
    for sequences, values in zip(jobs, results):
        assert values == [float(sum(ids)) for ids in sequences]  # its own values, in its own order
    pooled = [ids for batch in device.batches[1:] for ids in batch]
    assert sorted(map(tuple, pooled)) == sorted(tuple(ids) for sequences in jobs for ids in sequences)
    assert len(device.batches) == 2  # one round for the three waiting jobs, in one batch: the budget holds them all
    assert [len(ids) for ids in pooled] == sorted(len(ids) for ids in pooled)  # sorted across jobs


def test_a_round_that_fails_is_scored_job_by_job_so_that_only_the_faulty_job_fails():
    device, rounds, first, _ = busy_rounds()
    jobs = [job(2, 4), [[5, 5], [-1, 3]], job(3, 4)]
    threads, results, errors = score_in_threads(rounds, jobs)
    time.sleep(0.5)
    device.hold.set()
    for thread in [*first, *threads]:
        thread.join(30)
    assert isinstance(errors[1], ValueError) and results[1] is None
    assert results[0] == [float(sum(ids)) for ids in jobs[0]] and results[2] == [float(sum(ids)) for ids in jobs[2]]


def test_a_job_that_timed_out_while_waiting_is_left_out_of_later_rounds():
    device, rounds, first, _ = busy_rounds()
    with pytest.raises(JobTimeoutException), TimerDeathPenalty(1, JobTimeoutException):  # as in a worker's slot
        rounds.score([[9] * 4])
    device.hold.set()
    for thread in first:
        thread.join(30)
    assert rounds.score([[2, 2]]) == [4.0]
    assert not any(9 in ids for batch in device.batches for ids in batch)


def test_the_device_thread_ends_when_idle_and_starts_again_with_the_next_job():
    device = Device()
    rounds = ScoringRounds(TokenBudget(100, 8), device.run_batch, read, idle_seconds=0.2, name="idle-test-device")
    assert rounds.score([[1, 2], [3]]) == [3.0, 3.0]
    deadline = time.monotonic() + 10
    while any(t.name == "idle-test-device" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "idle-test-device" for t in threading.enumerate())
    assert rounds.score([[4]]) == [4.0] and rounds.score([]) == []


def test_a_device_thread_that_dies_fails_its_waiting_jobs_instead_of_hanging_them():
    class Fatal(BaseException):
        """Not an Exception: nothing on the way catches it, as with a bug in the round itself."""

    def read_or_die(per_batch):
        raise Fatal("boom")

    rounds = ScoringRounds(TokenBudget(100, 8), Device().run_batch, read_or_die, name="dying-device")
    with pytest.raises(RuntimeError, match="the reward device thread stopped: Fatal"):
        rounds.score([[1, 2]])
    assert rounds._thread is None  # the next job starts a thread of its own


def test_a_device_clock_brackets_every_pass_and_its_account_joins_the_rounds_line():
    """On a GPU the rounds line adds the GPU's own account (`CudaPassClock`): here a clock with the same interface
    that counts what the rounds ask of it, one collection per round."""

    class CountingClock:
        def __init__(self):
            self.calls: list[str] = []
            self.unread = 0

        def before_pass(self):
            self.calls.append("before")

        def after_pass(self):
            self.calls.append("after")
            self.unread += 1

        def discard(self):
            self.calls.append("discard")
            self.unread = 0

        def collect(self):
            self.calls.append(f"collected {self.unread}")
            passes, self.unread = self.unread, 0
            return 0.25 * passes, 1.0

    clock = CountingClock()
    rounds = ScoringRounds(TokenBudget(6, 8, pass_cost=0), Device().run_batch, read, clock=clock)
    assert rounds.score([[1, 1, 1], [2, 2, 2], [3]]) == [3.0, 6.0, 3.0]  # two passes: 6 padded tokens at most
    assert rounds.score([[4]]) == [4.0]
    assert clock.calls == ["discard", "before", "after", "before", "after", "collected 2",
                           "discard", "before", "after", "collected 1"]
    assert rounds.totals.passes == 3 and rounds.totals.gpu_pass_seconds == 0.75 and rounds.totals.gpu_round_seconds == 2.0
    assert rounds.totals.line().endswith("; GPU ran passes 0.8 s of its rounds' 2.0 s")
    plain = ScoringRounds(TokenBudget(6, 8), Device().run_batch, read)
    plain.score([[1]])
    assert "GPU" not in plain.totals.line()  # a CPU's passes are the host's time: no second account


def test_the_failed_rounds_tensors_are_released_before_its_jobs_run_alone():
    """On a device, a failed pass's activations are the memory whose lack made it fail: the jobs rescored alone must
    not run while the exception's frames still hold them. Here a plain object stands for them."""
    import weakref

    class Activations:
        pass

    held, alive_while_alone = [], []

    def run_batch(batch):
        activations = Activations()  # noqa: F841 (a local of the failing frame, as a forward pass's tensors are)
        if any(-1 in ids for ids in batch):
            held.append(weakref.ref(activations))
            raise ValueError("a bad sequence")
        alive_while_alone.append(any(ref() is not None for ref in held))
        return [float(sum(ids)) for ids in batch]

    gate = threading.Event()
    rounds = ScoringRounds(TokenBudget(10_000, 1000), lambda batch: gate.wait(10) and [7.0] if batch == [[7]] else run_batch(batch), read)
    threads, results, errors = score_in_threads(rounds, [[[7]]])
    time.sleep(0.2)  # the device holds [[7]]: the next two jobs wait for one round together
    more, more_results, more_errors = score_in_threads(rounds, [[[1, 2], [3]], [[-1] * 50]])
    time.sleep(0.2)
    gate.set()
    for thread in [*threads, *more]:
        thread.join(10)
    assert results == [[7.0]] and more_results[0] == [3.0, 3.0] and isinstance(more_errors[1], ValueError)
    assert alive_while_alone and not any(alive_while_alone)
