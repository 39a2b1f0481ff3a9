"""verify:math and verify:exact: answers checked against the row's ground truth, which travels with the prompt;
correctness first (lexicographic) and an SFT file of verified best candidates, end to end through `rsample run`."""

import json

import pytest
from conftest import read_jsonl, rsample, write_jsonl
from faults import outcome_rows

from rsample.producer.prompts import RowSkip, extract_prompt
from rsample.workers.backends.verifiers import AnswerVerifier
from rsample.workers.common.errors import RsampleError
from rsample.workers.common.messages import Candidate, GeneratedPrompt, PromptRecord
from rsample.workers.stages.score import score_isolating_failures


def answer(text: str) -> list[dict]:
    return [{"role": "user", "content": "question"}, {"role": "assistant", "content": text}]


@pytest.fixture(scope="module")
def math_verifier():
    """One verifier (one math-verify child process) for many checks."""
    verifier = AnswerVerifier("verify:math", "answer")
    yield verifier
    verifier.checker.close()


@pytest.mark.parametrize(
    "gold, completion, expected",
    [
        # MATH-style answers without `$`: math-verify read nothing in `\\sqrt{2}`, and only `2` in `2\\sqrt{2}`
        ("\\sqrt{2}", "The answer is $\\boxed{\\sqrt{2}}$.", 1.0),
        ("2\\sqrt{2}", "\\boxed{2}", 0.0),
        ("3\\pi", "\\boxed{3}", 0.0),
        ("\\dfrac{9}{7}", "\\boxed{\\frac{9}{7}}", 1.0),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", 1.0),
        ("\\(x+1\\)", "\\boxed{x+1}", 1.0),
        # the last \\boxed{} is the answer: a completion that corrected itself was read as the set {5, 6}
        ("6", "\\boxed{5}. Wait, that is wrong: \\boxed{6}", 1.0),
        ("5", "\\boxed{5}. Wait, that is wrong: \\boxed{6}", 0.0),
        ("42", "\\boxed{42}, or \\boxed{4", 1.0),  # one a length cut left open is passed over
        ("10", "\\boxed{10}\\boxed{}", 1.0),  # so is an empty one: it read as no answer
        # GSM8K's style: what follows `####`, not the last number of the chatter after it
        ("42", "6 times 7.\n#### 42\n\nI can answer 2 more questions.", 1.0),
        ("-5", "The answer is \\boxed{\u22125}.", 1.0),  # a Unicode minus
        ("-5", "The answer is \u22125.", 1.0),
        ("\u22125", "The answer is -5.", 1.0),
        # a markdown heading is no GSM8K answer line: the completion's last number is its answer
        ("7", "Let me count.\n#### Final Answer\n7", 1.0),
        ("7", "#### Conclusion\nShe has 7 apples.", 1.0),
        ("42", "#### Step 3: Final answer\nSo the total is 42.", 1.0),
        ("-5", "#### Final Answer\nSo x = \u22125.", 1.0),
        ("7", "She has 7 apples.\n#### Final Answer", 1.0),
        # GSM8K's answer line with a unit, in bold or in LaTeX, followed by more text: no heading
        ("18", "#### 18 dollars\nSo she earns 9 eggs at $2 each.", 1.0),
        ("42", "#### **42**\n\nDone in 2 steps.", 1.0),
        ("\\frac{3}{4}", "#### \\frac{3}{4}\n\nOf the 4 equally likely cases.", 1.0),
        ("2\\sqrt{2}", "#### 2\\sqrt{2}", 1.0),
        # a float answer column: its repr `1e-05` was read as an expression in E
        (0.00001, "\\boxed{0.00001}", 1.0),
        (1e20, "\\boxed{100000000000000000000}", 1.0),
        # the same as a CSV's text, which is read as written now: `1e-05`, `1e3`, `1.0e2`, `42.0`
        ("1e-05", "\\boxed{0.00001}", 1.0),
        ("1e3", "\\boxed{1000}", 1.0),
        ("1.0e2", "\\boxed{100}", 1.0),
        ("42.0", "\\boxed{42}", 1.0),
        # a heading in bold, or numbered, is a heading: its step number was read as the answer
        ("42", "#### **Step 1: Understand**\nWe need 6 times 7.\n\n#### **Step 2: Multiply**\n6 * 7 = 42.\n\nSo it is 42.", 1.0),
        ("2", "#### **Step 1: Understand**\nWe need 6 times 7.\n\n#### **Step 2: Multiply**\n6 * 7 = 42.\n\nSo it is 42.", 0.0),
        ("2", "#### 1. Understand\nWe need 6 times 7.\n\n#### 2. Multiply\n6 * 7 = 42.", 0.0),
    ],
)
def test_latex_answers_the_last_box_and_float_columns_are_read_as_written(math_verifier, gold, completion, expected):
    assert math_verifier.score([answer(completion)], [{"answer": gold}]) == [expected]


def test_a_pathological_answer_is_decided_in_bounded_time_and_the_checks_go_on(math_verifier):
    """math-verify ran for ever on these (in C code no job timer interrupts), and the worker's job stayed claimed."""
    import time

    nested = "1"
    for _ in range(20):
        nested = f"\\frac{{1}}{{1+{nested}}}"
    started = time.monotonic()
    scores = math_verifier.score([answer("\\boxed{10^{10^{10}}}"), answer(f"\\boxed{{{nested}}}"), answer("\\boxed{1}")],
                                 [{"answer": "1"}] * 3)
    assert scores == [0.0, 0.0, 1.0]
    assert time.monotonic() - started < 3 * (3 * math_verifier.checker.seconds + 1)


def test_a_check_that_never_answers_is_killed_and_the_next_one_starts_a_new_child():
    """The last resort where math-verify's own time limit fails: the child is killed, the candidate is not verified."""
    import sys

    from rsample.workers.backends.math_check import MathChecker

    class Stuck(MathChecker):
        def _command(self):
            return [sys.executable, "-c", "import sys, time; print('{\"id\": 0, \"answer\": true}', flush=True); "
                    "sys.stdin.readline(); time.sleep(60)"]

    checker = Stuck(seconds=1)
    assert checker.equal("1", "\\boxed{1}") is False
    first = checker._process
    assert first is None  # killed
    assert checker.equal("1", "\\boxed{1}") is False  # a new child, stuck again, killed again
    checker.close()


SLOW_CHILD = """
import sys, time, rsample.workers.backends.math_check as m
real_answer = m._answer
def slow_answer(completion):
    if "slow" in completion:
        time.sleep(2)
    return real_answer(completion.replace("slow", ""))
m._answer = slow_answer
m.serve(5)
"""


@pytest.mark.parametrize("penalty", ["TimerDeathPenalty", "UnixSignalDeathPenalty"])  # the slots' timer, the main slot's
def test_a_job_timeout_during_a_check_leaves_no_answer_for_the_next_check(penalty):
    """RQ's job timer fired while a check waited: the child's answer stayed in the pipe, and every later check of that
    worker read the answer to the one before it (a wrong answer verified, a right one not)."""
    import sys
    import time

    from rq import timeouts

    from rsample.workers.backends.math_check import MathChecker

    class Slow(MathChecker):
        def _command(self):
            return [sys.executable, "-c", SLOW_CHILD]

    checker = Slow()
    try:
        assert checker.equal("1", "\\boxed{1}") is True
        with pytest.raises(timeouts.JobTimeoutException):
            with getattr(timeouts, penalty)(1, timeouts.JobTimeoutException, job_id="j"):
                checker.equal("1", "slow \\boxed{1}")
        time.sleep(2)  # the abandoned check's answer would be in the pipe by now
        assert checker.equal("1", "\\boxed{7}") is False
        assert checker.equal("1", "\\boxed{1}") is True
    finally:
        checker.close()


def test_an_older_answer_in_the_pipe_is_passed_over_without_losing_the_awaited_one():
    """An older check's answer (one cut short) and the awaited one arrived together: a buffered reader took both, select
    saw nothing more, and the awaited answer was waited for until the limit and scored as not verified."""
    import json
    import time

    from rsample.workers.backends.math_check import MathChecker

    checker = MathChecker()
    try:
        checker._start()
        for request_id in (1, 2):  # 1: a check cut short (its answer still in the pipe); 2: the one awaited
            checker._process.stdin.write((json.dumps({"gold": "42", "completion": "\\boxed{42}", "id": request_id}) + "\n").encode())
        checker._process.stdin.flush()
        time.sleep(2.0)  # both answered
        assert checker._answer(2, 3.0) is True
    finally:
        checker.close()


def test_ctrl_c_in_the_workers_terminal_leaves_the_checks_alone():
    """Ctrl-C reaches the terminal's whole process group: the child died of it, and the check in flight, a right answer,
    was scored 0.0 while the worker's warm shutdown finished its job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    parent_code = """
import signal
from rsample.workers.backends.math_check import MathChecker
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))  # the worker's warm shutdown: the job goes on
checker = MathChecker()
checker.equal("1", "\\\\boxed{1}")
print("ready", flush=True)
wrong = checks = 0
while not stop and checks < 200_000:  # checks in flight when the Ctrl-C comes, however fast this machine checks
    wrong += not checker.equal("12", "\\\\boxed{12}")
    checks += 1
wrong += sum(not checker.equal("12", "\\\\boxed{12}") for _ in range(200))  # and after it
print("wrong", wrong, "stopped", bool(stop), flush=True)
"""
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.killpg(parent.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out = parent.stdout.read()
        parent.wait(timeout=120)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert out.strip() == "wrong 0 stopped True", out


def test_a_ground_truth_math_verify_cannot_read_is_a_skip_with_its_reason(math_verifier):
    assert math_verifier.missing_reason({"answer": "\\text{}"}) == (
        "verify:math: math-verify reads no answer in the row's ground truth '\\\\text{}'")
    assert math_verifier.missing_reason({"answer": "42"}) is None
    assert math_verifier.missing_reason({"answer": ["Paris", "paris, france"]}) == (
        "verify:math: the row holds a list in 'answer', not one answer (a string or a number)")
    assert math_verifier.missing_reason({"answer": float("nan")}) == "verify:math: the row has no ground truth in column 'answer'"
    # MATH writes money with an escaped dollar, which is no math delimiter: it was skipped as unreadable
    assert math_verifier.missing_reason({"answer": "\\$18.90"}) is None
    assert math_verifier.score([answer("\\boxed{18.9}")], [{"answer": "\\$18.90"}]) == [1.0]


@pytest.mark.parametrize(
    "gold, completion, expected",
    [
        ("42", "6 times 7 is \\boxed{42}.", 1.0),
        ("42", "so the answer is 42", 1.0),
        ("42", "\\boxed{41}", 0.0),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "In all, 48 + 24 = 72", 1.0),  # GSM8K's answer field
        ("#### 1,234", "The total is 1234.", 1.0),
        ("\\frac{1}{2}", "It is \\boxed{0.5}", 1.0),
        ("0.5", "one half: \\boxed{\\frac{1}{2}}", 1.0),
        ("$x^2+2x+1$", "\\boxed{(x+1)^2}", 1.0),  # equal as expressions, not as text
        ("7", "I do not know", 0.0),
        (12, "\\boxed{12}", 1.0),  # a number column, as JSON gives it
    ],
)
def test_math_answers_are_equal_when_their_values_are(gold, completion, expected):
    verifier = AnswerVerifier("verify:math", "answer")
    assert verifier.score([answer(completion)], [{"answer": gold}]) == [expected]


@pytest.mark.parametrize(
    "gold, completion, expected",
    [
        # the question restated, which sympy evaluates to the answer: the quickstart's tiny policy was rewarded for it
        ("19", "I don't know what 9 + 10 is.", 0.0),
        ("19", "9 + 10 = 9 + 10, \nThis \\boxed{} is a notation.", 0.0),
        ("42", "We need $6 \\times 7$. I am not sure.", 0.0),
        ("120", "We need $\\binom{10}{3}$, which I cannot evaluate.", 0.0),
        ("120", "\\boxed{\\binom{10}{3}}", 0.0),
        ("55", "\\boxed{\\sum_{k=1}^{10} k}", 0.0),
        ("99", "The answer is 100 - 1.", 0.0),
        ("19", "I don't know what 38/2 is.", 0.0),
        ("19", "\\boxed{\\frac{38}{2}}", 0.0),  # a fraction in lowest terms is a number; this one is still to divide
        ("1200", "I don't know what $12 \\times 10^{2}$ is.", 0.0),
        ("1", "#### 2 1/2", 0.0),  # sympy reads 2 × 1/2
        ("1024", "\\boxed{2^{10}}", 0.0),
        ("0.5", "one half: \\boxed{\\frac{2}{4}}", 0.0),
        # a number as written, in its forms, is an answer
        ("19", "9 + 10 = 19", 1.0),
        ("1200", "\\boxed{1.2 \\times 10^{3}}", 1.0),
        ("50", "\\boxed{50\\%}", 1.0),
        ("5", "\\boxed{x = 5}", 1.0),
        ("18", "She earns \\boxed{18 \\text{ dollars}}.", 1.0),
        ("90", "\\boxed{90^\\circ}", 1.0),
        ("3/4", "The answer is $\\frac{3}{4}$.", 1.0),
        # a relation's right side is its answer, as chat models end a solution
        ("54", "Therefore, the answer is $18 \\times 3 = 54$.", 1.0),
        ("18", "Janet sells $16 - 3 - 4 = 9$ eggs. She makes $9 \\times 2 = 18$ dollars.", 1.0),
        ("-5", "It costs $3 - 8 = -5$.", 1.0),
        ("19", "\\boxed{9 + 10 = 19}", 1.0),
        ("5", "\\boxed{a_{1} = 5}", 1.0),
        # written with what numbers are written with
        ("2.5", "\\boxed{2\\frac{1}{2}}", 1.0),
        ("1000000", "\\boxed{10^{6}}", 1.0),
        ("5", "\\boxed{\\mathbf{5}}", 1.0),
        ("42", "\\boxed{\\text{42}}", 1.0),
        ("-5", "\\boxed{(-5)}", 1.0),
        ("3.14", "\\boxed{\\approx 3.14}", 1.0),
        ("12", "\\boxed{12\\text{ cm}^2}", 1.0),
        # where the ground truth is no number, expressions are compared as before
        ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
    ],
)
def test_a_numeric_answer_must_be_a_number_not_the_question_restated(math_verifier, gold, completion, expected):
    assert math_verifier.score([answer(completion)], [{"answer": gold}]) == [expected]


@pytest.mark.parametrize(
    "gold, completion, expected",
    [
        # LaTeX's thousands separators: math-verify read `1\\,000` as 1 × 000, equal to 0 and not to 1000
        ("1000", "\\boxed{1\\,000}", 1.0),
        ("0", "\\boxed{1\\,000}", 0.0),
        ("1000000", "The total is $\\boxed{1\\,000\\,000}$ dollars.", 1.0),
        ("10080", "\\boxed{10,\\!080}", 1.0),
        ("10,\\!080", "\\boxed{10080}", 1.0),  # MATH's ground truths write them so
        ("1000", "\\boxed{1 000}", 1.0),
        ("1000", "#### 1\\,000", 1.0),
        ("1000", "So she pays $1\\,000$ in all.", 1.0),
        ("3.14159", "\\boxed{3.141\\,59}", 0.0),  # no thousands after a decimal point
        ("125", "\\boxed{0{,}125}", 0.0),  # a decimal comma: no thousands group begins with 0
        ("0.125", "\\boxed{0{,}125}", 1.0),
        ("125", "\\boxed{0 125}", 0.0),
        # spaced LaTeX separators, and the decimal comma where no thousands group follows (math-verify read neither)
        ("2000", "\\boxed{2 \\, 000}", 1.0),
        ("2000", "#### 2 \\, 000", 1.0),
        ("0.5", "\\boxed{0{,}5}", 1.0),
        ("3.14", "The answer is $3{,}14$.", 1.0),
        ("12.5", "\\boxed{12{,}5}", 1.0),
        ("5", "\\boxed{0{,}5}", 0.0),
        ("1500", "\\boxed{1{,}500}", 1.0),
        ("1.5", "\\boxed{1{,}500}", 0.0),
        ("1.2", "\\boxed{1{,}2{,}3}", 0.0),  # a list
        ("(1, 2)", "\\boxed{(1{,}2)}", 1.0),  # a pair, a set, an interval: no decimal comma inside brackets
        ("1.2", "\\boxed{(1{,}2)}", 0.0),
        ("\\{1, 2\\}", "\\boxed{\\{1{,}2\\}}", 1.0),
        ("1.2", "\\boxed{\\{1{,}2\\}}", 0.0),
        ("[1, 5]", "\\boxed{[1{,}5]}", 1.0),
        ("1.5", "\\boxed{1{,}5{,}000}", 0.0),
        ("5100", "\\boxed{5 ~ 100}", 0.0),  # spaced, only LaTeX's thin space groups digits
        ("12345", "\\boxed{12 \\; 345}", 0.0),
        # a percentage for a ground truth without `%`: math-verify took `50\\%` for 50, not `3.5\\%` for 3.5
        ("3.5", "\\boxed{3.5\\%}", 1.0),
        ("3.5", "The rate is 3.5%.", 1.0),
        ("0.035", "\\boxed{3.5\\%}", 1.0),
        ("3.6", "\\boxed{3.5\\%}", 0.0),
        ("3.5\\%", "\\boxed{0.035}", 1.0),
        ("0.5", "\\boxed{0.5\\%}", 0.0),  # under 1, a ground truth is more often a probability
        # a ground truth written `a:b` (a ratio, a time) is answered by the same digits: math-verify read `3:1` as 3
        # and `2:30` as 2/30, and the restatement guard refused `3:1` itself
        ("3:1", "\\boxed{3:1}", 1.0),
        ("2:3", "The ratio is $\\boxed{2 : 3}$.", 1.0),
        ("2:3", "The ratio of boys to girls is 2:3.", 1.0),
        ("2:30", "The train leaves at 2:30.", 1.0),
        ("3:1", "\\boxed{6:2}", 0.0),
        ("2:3", "\\boxed{3:2}", 0.0),
        ("3:1", "\\boxed{3}", 0.0),
        ("2:30", "\\boxed{1:15}", 0.0),
        ("12:05", "\\boxed{12:5}", 0.0),
        # and `a:b` answers no ground truth that is one number (times read as ratios: `10:01` was 10)
        ("10", "\\boxed{10:01}", 0.0),
        ("7", "\\boxed{7:01 pm}", 0.0),
        ("0", "\\boxed{0:1}", 0.0),
        ("0.4", "\\boxed{2:05}", 0.0),
        # the `a:b` that ends a completion without a box, not one a number follows (a ratio or time of the question,
        # a `Step 1: 2 + 2` label, across a line break), nor a decimal's or a negative's digits
        ("3:1", "Initially the ratio is 3:1. After adding, it becomes 5.", 0.0),
        ("2:30", "He starts at 2:30 and works 3 hours, so he finishes at 5 30 pm.", 0.0),
        ("1:2", "Step 1: 2 + 2 = 4\nStep 2: multiply by 3 to get 12.\nThe final ratio is 12 to 5.", 0.0),
        ("3:1", "Case 3:\n1 way. Total 5 ways.", 0.0),
        ("3:1", "The ratio is 1.3:1.", 0.0),
        ("3:1", "The ratio is -3:1.", 0.0),
        ("3:1", "The ratio is 3:1.5.", 0.0),
        # three parts: math-verify read `1:2:3` as 1/2/3, which `\\frac{1}{6}` equals
        ("1:2:3", "\\boxed{\\frac{1}{6}}", 0.0),
        ("1:2:3", "\\boxed{1:1:6}", 0.0),
        ("1:2:3", "\\boxed{1:2:3}", 1.0),
        # `:` as LaTeX and Unicode write it, and a box that ends with the ratio
        ("3:1", "\\boxed{3 \\colon 1}", 1.0),
        ("3:1", "So it is $3\\!:\\!1$.", 1.0),
        ("3:1", "The ratio is 3\u22361.", 1.0),
        ("3:1", "#### The ratio is 3:1", 1.0),
        ("2:30", "\\boxed{2:30 PM}", 1.0),
        # LaTeX's spacing left between digits is no number: math-verify multiplied `01\\,000` into 0
        ("0", "\\boxed{01\\,000}", 0.0),
        ("0", "\\boxed{10\\,000\\,0}", 0.0),
        ("185.319", "\\boxed{3.141\\,59}", 0.0),
        ("125", "\\boxed{0\\,125}", 0.0),
    ],
)
def test_numbers_are_read_with_their_thousands_separators_percent_signs_and_ratios(math_verifier, gold, completion, expected):
    assert math_verifier.score([answer(completion)], [{"answer": gold}]) == [expected]


@pytest.mark.parametrize(
    "gold, completion, expected",
    [
        ("Paris", "The capital is \\boxed{Paris}", 1.0),
        ("Paris", "paris.", 1.0),  # case and trailing punctuation
        ("New  York", "#### new york", 1.0),
        ("1,000", "\\boxed{1000}", 1.0),  # thousands separators
        ("Paris", "The capital is Paris", 0.0),  # exact: the final answer is the whole text here
        ("1/2", "\\boxed{0.5}", 0.0),  # no arithmetic
        ("-5", "\\boxed{\u22125}", 1.0),
        ("\u22125", "-5", 1.0),
        ("42 #### \u22125", "#### \u22125", 1.0),
        ("\\frac{3}{4}", "#### \\frac{3}{4}\n\nOf the 4 equally likely cases.", 1.0),
        ("C", "\\boxed{C}\\boxed{ }", 1.0),
        (42.0, "\\boxed{42}", 1.0),  # a CSV column with an empty cell is read as floats: `42.0` was no `42`
        (6.02e23, "#### 602000000000000000000000", 1.0),  # as written, not the float's binary digits
        ("210", "\\boxed{2**10}", 0.0),  # markdown's bold is stripped around the answer only
        ("Paris", "\\boxed{\\text{Paris}}", 1.0),
        ("42", "#### **42**", 1.0),
        ("42.0", "\\boxed{42}", 1.0),  # as pandas writes a float column into a CSV, whose cells are read as text now
        ("2.0", "\\boxed{2.0}", 1.0),
        ("2", "#### 2.00", 1.0),
        ("1e-05", "\\boxed{0.00001}", 1.0),
        ("007", "\\boxed{7}", 1.0),  # numerals by their value
        ("3.5", "\\boxed{35}", 0.0),
    ],
)
def test_exact_answers_compare_normalised_text(gold, completion, expected):
    assert AnswerVerifier("verify:exact", "answer").score([answer(completion)], [{"answer": gold}]) == [expected]


def test_an_unknown_verifier_is_refused_in_one_line():
    with pytest.raises(RsampleError, match="unknown verifier 'verify:maths': choose from verify:math, verify:exact"):
        AnswerVerifier("verify:maths", "answer")


def test_the_answer_column_travels_with_the_prompt_and_a_huge_one_is_a_counted_skip():
    row = {"prompt": "what is 6 x 7?", "answer": "42", "solution": "long"}
    record = extract_prompt(row, 3, columns=("answer",))
    assert record.columns == {"answer": "42"}  # only what a reward asks for
    assert PromptRecord.from_dict(json.loads(json.dumps(record.__dict__))) == record  # JSON on the wire
    assert extract_prompt({"prompt": "q"}, 0, columns=("answer",)).columns is None
    skipped = extract_prompt({"prompt": "q", "answer": "9" * 70_000}, 5, columns=("answer",))
    assert isinstance(skipped, RowSkip) and skipped.reason == "reward columns too large" and "row 5" in skipped.detail


def generated(prompt_id: str, texts: list[str], columns) -> GeneratedPrompt:
    record = PromptRecord(prompt_id, [{"role": "user", "content": "q"}], None, 0, columns)
    return GeneratedPrompt(record, [Candidate(text, [k]) for k, text in enumerate(texts)], len(texts))


def test_a_row_without_ground_truth_is_skipped_with_the_reason_and_the_others_are_scored():
    prompts = [generated("a", ["\\boxed{4}", "\\boxed{5}"], {"answer": "4"}), generated("b", ["x", "y"], None),
               generated("c", ["\\boxed{1}", "1"], {"answer": ""})]
    verdicts = score_isolating_failures(AnswerVerifier("verify:math", "answer"), 0, prompts)
    assert verdicts["a"] == {"scores": [1.0, 0.0], "skip_reason": None}
    assert verdicts["b"] == {"scores": None, "skip_reason": "verify:math: the row has no ground truth in column 'answer'"}
    assert verdicts["c"]["skip_reason"] == "verify:math: the row has no ground truth in column 'answer'"


ROWS = [
    {"messages": [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": "6 times 7 is \\boxed{42}."}],
     "answer": "42"},
    {"messages": [{"role": "user", "content": "Half of one, as a fraction?"}, {"role": "assistant", "content": "\\boxed{\\frac{1}{2}}"}],
     "answer": "Half of 1 is 1/2.\n#### 0.5"},
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}], "answer": None},
    {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "It is \\boxed{5}."}],
     "answer": "4"},
]


def test_verified_answers_come_first_and_the_sft_file_keeps_the_verified_best(tmp_path):
    """Echoed prompts as candidates (the echo generator: the question + 1 to 3 '#'), plus the dataset's reference
    answer; rewards: verify:math, then the completion's length. Expected results worked out by hand per row."""
    dataset = write_jsonl(tmp_path / "math.jsonl", ROWS)
    out, scores, sft = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "sft.jsonl"
    result = rsample("run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-backend", "length",
                     "--reward-model", "verify:math", "--reward-model", "length", "--include-reference", "--n", "3",
                     "--out", str(out), "--scores-out", str(scores), "--sft-out", str(sft), "--no-progress")
    pairs = {row["messages"][0]["content"]: row for row in read_jsonl(out)}
    # rows 0 and 1: only the reference is right, so it is chosen although the echoes are longer
    for question, reference in (("What is 6 times 7?", "6 times 7 is \\boxed{42}."), ("Half of one, as a fraction?", "\\boxed{\\frac{1}{2}}")):
        pair = pairs[question]
        assert pair["chosen"][-1]["content"] == reference and pair["chosen_score"]["verify:math"] == 1.0
        assert pair["rejected"][-1]["content"] == f"{question} #" and pair["rejected_score"] == {"verify:math": 0.0, "length": len(question) + 2}
    # row 3: nothing is right: no pair of two wrong answers (the length would have chosen the longest echo)
    assert set(pairs) == {"What is 6 times 7?", "Half of one, as a fraction?"}
    assert "dropped, unverified  1\n" in result.stdout
    assert "verify:math: the row has no ground truth in column 'answer'" in result.stdout  # row 2: a counted skip
    assert "sft rows written     2\n" in result.stdout
    sft_rows = {row["messages"][0]["content"]: row for row in read_jsonl(sft)}
    assert set(sft_rows) == {"What is 6 times 7?", "Half of one, as a fraction?"}  # verified best only
    assert sft_rows["What is 6 times 7?"]["messages"][-1] == {"role": "assistant", "content": "6 times 7 is \\boxed{42}."}
    assert sft_rows["What is 6 times 7?"]["score"] == {"verify:math": 1.0, "length": 24.0} and sft_rows["What is 6 times 7?"]["is_reference"]
    assert len(read_jsonl(scores)) == 3 * 4  # three prompts scored, each 3 echoes + the reference


def test_aggregate_refuses_an_sft_file_for_a_run_enqueued_without_sft(redis_server, tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "what is 1 + 1?", "answer": "2"}])
    common = ["--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "echo", "--backend", "echo",
              "--reward-backend", "length", "--reward-model", "verify:math", "--reward-model", "length"]
    run_id = rsample("enqueue", *common).stdout.strip()
    result = rsample("aggregate", "--redis-url", redis_server.url, "--run", run_id, "--out", str(tmp_path / "pairs.jsonl"),
                     "--sft-out", str(tmp_path / "sft.jsonl"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: run {run_id} was made without --sft: its prompts with one distinct candidate were "
                                     "not scored, so --sft-out would miss them; enqueue the run with --sft")
    assert rsample("enqueue", *common, "--sft").stdout.strip() != run_id  # a run of its own, whose aggregator may write one


def test_a_dataset_whose_answers_no_verifier_can_use_is_refused_before_any_sampling(tmp_path):
    """TriviaQA-style alias lists in every row: every completion was generated, then every row skipped."""
    dataset = write_jsonl(tmp_path / "lists.jsonl", [{"question": f"q{i}", "answer": ["Paris", "paris, france"]} for i in range(3)])
    result = rsample("run", "--dataset", str(dataset), "--prompt-column", "question", "--policy", "echo", "--backend", "echo",
                     "--reward-model", "verify:math", "--out", str(tmp_path / "pairs.jsonl"), "--no-progress", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: none of the first 3 rows of dataset {str(dataset)!r} has a ground truth for verify:math: the first row holds a "
        "list in 'answer', not one answer (a string or a number) (name its column with --answer-column)")
    assert not (tmp_path / "pairs.jsonl").exists()


def test_a_row_without_ground_truth_is_skipped_unsampled_and_a_copy_with_one_is_no_duplicate(tmp_path):
    """Rows without a usable ground truth were sampled, then skipped when scored; and, read first, they made every
    later row of the same prompt a "duplicate", that with the answer included, and so too a corrected copy appended
    to fix the dataset: the question got no pair at all."""
    rows = [{"prompt": "what is 2+2? 4", "answer": None}, {"prompt": "what is 3+3? 6", "answer": "6"},
            {"prompt": "what is 2+2? 4", "answer": "4"}, {"prompt": "what is 5+5? 10", "answer": [10]}]
    dataset = write_jsonl(tmp_path / "math.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    command = ["run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-model", "verify:math",
               "--reward-model", "rm=r", "--reward-backend", "length", "--n", "3", "--out", str(out), "--no-progress"]
    result = rsample(*command)
    outcomes = {o["row_index"]: o for o in outcome_rows(out) if "row_index" in o}
    assert outcomes[0]["outcome"] == outcomes[3]["outcome"] == "skipped"
    assert outcomes[0]["reason"] == "verify:math: the row has no ground truth in column 'answer'"
    assert outcomes[3]["reason"] == "verify:math: the row holds a list in 'answer', not one answer (a string or a number)"
    assert outcomes[2]["outcome"] == "pair" and outcomes[1]["outcome"] == "pair"  # the echo's `...? 4#` verifies; each has a pair
    assert "completions          6" in result.stdout  # 2 prompts × 3: the rows without ground truth were never sampled
    with dataset.open("a") as handle:  # the dataset fixed by a corrected copy at its end
        handle.write(json.dumps({"prompt": "what is 5+5? 10", "answer": "10"}) + "\n")
    rsample(*command)
    outcomes = {o["row_index"]: o for o in outcome_rows(out) if "row_index" in o}
    assert outcomes[4]["outcome"] == "pair"
    assert sorted(pair["messages"][-1]["content"] for pair in read_jsonl(out)) == ["what is 2+2? 4", "what is 3+3? 6", "what is 5+5? 10"]
