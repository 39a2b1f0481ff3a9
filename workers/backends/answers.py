"""Answers: a row's ground truth, a completion's final answer, and their normalised text, for `verify:` rewards."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any


def ground_truth(value: Any) -> str | None:
    """The row's answer as text, or None when it has none a verifier can use."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return None  # a NaN cell is no answer (as "nan" it would verify `\\boxed{nan}`)
    # a float's repr may be scientific (1e-05), which math-verify reads as an expression in E: its plain digits instead
    # and an integral float as an integer: a CSV column with one empty cell is read as floats, and `42.0` is no `42` to
    # verify:exact
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f").removesuffix(".0")  # its shortest digits: 6.02e23 is no 601999999999999995805696
    else:
        text = str(value).replace("\u2212", "-")
    if "####" in text:  # GSM8K: the reasoning, then `#### <answer>`
        text = text.rsplit("####", 1)[1]
    text = text.strip()
    return _plain_number(text) or None


SCIENTIFIC = re.compile(r"[-+]?\d+(?:\.\d+)?[eE][-+]?\d+")
NUMERAL = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _plain_number(text: str) -> str:
    """A number in scientific notation as plain digits, as a float's is read (pandas writes `1e-05` into a CSV, whose
    cells reach here as text; math-verify reads it as an expression in E)."""
    return format(Decimal(text), "f") if SCIENTIFIC.fullmatch(text) else text


def same_answer(answer: str, gold: str) -> bool:
    """`verify:exact`'s comparison of normalised texts: two numerals by their value (`42.0` is `42`: a CSV column of
    floats holds `42.0`, a float column's `42.0` is read as `42`)."""
    if answer == gold:
        return True
    return bool(NUMERAL.fullmatch(answer) and NUMERAL.fullmatch(gold)) and Decimal(answer) == Decimal(gold)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` whose braces close and hold something (one a length cut left open, or an
    empty one, is passed over), or None."""
    start = len(text)
    while (start := text.rfind("\\boxed{", 0, start)) >= 0:
        depth, position = 0, start + len("\\boxed")
        for index in range(position, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                if text[position + 1:index].strip():
                    return text[position + 1:index]
                break
    return None


HEADING_WORDS = re.compile(r"(?:step|part|final|answer|conclusion|solution|summary|result|explanation|verification|check)\b",
                           re.IGNORECASE)


def _heading(line: str) -> bool:
    """A markdown heading (`#### Step 3: Final answer`, `#### **Step 2: Multiply**`, `#### 2. Multiply`, `#### Conclusion`),
    not GSM8K's answer line (`#### 18 dollars`, `#### **42**`, `#### \\frac{3}{4}`), when more text follows it."""
    text = line.strip().strip("*_ ")  # bold or italic, as chat models write their headings
    return (HEADING_WORDS.match(text) is not None or re.match(r"\d+[.)]\s+[^\W\d_]", text) is not None
            or re.search(r"[\d\\]", text) is None)


def final_answer(completion: str) -> str:
    """The last `\\boxed{}`, else GSM8K's answer line, after the last `####` (unless a markdown heading, which more text
    follows), else the whole completion; a Unicode minus (`−5`) read as `-`."""
    completion = completion.replace("\u2212", "-")
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    if "####" in completion:
        line, _, rest = completion.rsplit("####", 1)[1].strip().partition("\n")
        if not rest.strip() or not _heading(line):
            return line
    return completion


_GROUP_SEPARATOR = r"\\[,;: ]|[ \t]*\\,[ \t]*|\{,\}|,\\!|~"  # LaTeX's thin (spaced or not) and other spaces, `{,}`, `,\!`
_DECIMAL_COMMA = re.compile(r"(?<![\d.,(\[])(?<!\\\{)(?<!\{,\})(\d+)\{,\}(\d+)(?!\d|\{,\}|\\\}|[)\]])")
"""`0{,}5`, `3{,}14`: LaTeX's decimal comma, where no thousands group follows; not in a chain (`1{,}2{,}3`) nor inside
brackets (`(1{,}2)`, `[1{,}5]`, `\\{1{,}2\\}`), which are lists."""


def _decimal_comma(match: re.Match) -> str:
    whole, fraction = match[1], match[2]
    if re.fullmatch(r"[1-9]\d{0,2}", whole) and len(fraction) == 3:  # `1{,}500`: a thousands group
        return match[0]
    return f"{whole}.{fraction}"


def _grouped(separator: str) -> re.Pattern:
    return re.compile(rf"(?<![\d.])[1-9]\d{{0,2}}(?:(?:{separator})\d{{3}})+(?!\d)")  # `0{,}125` is a decimal comma


_GROUPED, _SPACE_GROUPED = _grouped(_GROUP_SEPARATOR), _grouped(_GROUP_SEPARATOR + "| ")


def joined_digit_groups(text: str, spaces: bool = False) -> str:
    """`1\\,000`, `2 \\, 000`, `10,\\!080`, `1{,}000` (and with `spaces`, `1 000`) as `1000`: math-verify reads `1\\,000` as
    1 × 000, which verified it for a ground truth of 0 and not for 1000. A decimal comma, `0{,}5`, as `0.5`. `spaces`
    for an extracted answer only: in prose a space between numbers is no thousands separator."""
    text = _DECIMAL_COMMA.sub(_decimal_comma, text)
    return (_SPACE_GROUPED if spaces else _GROUPED).sub(lambda match: re.sub(r"\D", "", match[0]), text)


def normalized(answer: str) -> str:
    """Case, surrounding spaces and punctuation, `$` signs, thousands separators, inner runs of spaces, markdown's
    emphasis (`**42**`) and LaTeX's text wrappers (`\\text{Paris}`) ignored."""
    text = re.sub(r"\\(?:text|textbf|textit|mathrm|mbox)\{([^{}]*)\}", r"\1", answer)
    text = text.replace("$", "").lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .,:;!\"'`*_")


_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}\d]*\}(?:\^\{?\d\}?)?")
_FORMATTING = re.compile(r"\\(?:text|textbf|textit|mathbf|mathrm|mbox|boldsymbol|bm)\{([^{}]*)\}")
_DECORATION = re.compile(r"\\(?:textstyle|displaystyle|left|right)\b|\\[,!;: ]|\\?\$|\\?%|\^\{?\\circ\}?|\\circ|~")
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+"
_FRACTION = re.compile(r"([-+]?)(?:(\d+)\s*(?=\\))?(?:\\[dt]?frac(?:\{([-+]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))|(\d+)/(\d+))")


def _bare(answer: str) -> str:
    """An extracted answer without what a number may be written with: the left side of a relation (`x = 5`,
    `18 \\times 3 = 54`), `\\approx`, units, bold, `$`, `%`, degrees, LaTeX spacing, markdown's bold, outer brackets."""
    text = _UNIT.sub("", answer.replace("{,}", ","))
    for _ in range(3):
        text = _FORMATTING.sub(r"\1", text)
    text = re.split(r"=|\\approx", text)[-1]
    text = _DECORATION.sub("", text).strip().strip("*_").rstrip(".").strip()
    while (inner := re.fullmatch(r"\((.*)\)|\{(.*)\}|\\\{(.*)\\\}", text)) and "," not in (body := next(g for g in inner.groups() if g is not None)):
        text = body.strip()
    return text


_RATIO_SIGNS = re.compile(r"\\colon|\\mathbin\{:\}|\u2236|\\!")
"""How `:` is written in LaTeX and Unicode (`3 \\colon 1`, `3\\!:\\!1`, `3∶1`), as `:` (LaTeX's negative space, gone)."""
_RATIO = r"\d+(?:[ \t]*:[ \t]*\d+)+"
_LAST_RATIO = re.compile(rf"(?<![\d:.\-]){_RATIO}(?![\d:]|\.\d)(?=\D*$)")
"""An `a:b` (or `a:b:c`) with no number after it: not a decimal's, a negative's, nor a `Step 1: 2 + 2` label's."""


def _ratio_signs(text: str) -> str:
    return _RATIO_SIGNS.sub(lambda sign: "" if sign[0] == "\\!" else ":", text)


def ratio(text: str) -> tuple[str, ...] | None:
    """A text written as `a:b` or `a:b:c` (a ratio, a time), as its numbers' digits; else None."""
    bare = _bare(_ratio_signs(text))
    return tuple(re.findall(r"\d+", bare)) if re.fullmatch(_RATIO, bare) else None


def _last_ratio(text: str) -> tuple[str, ...] | None:
    found = _LAST_RATIO.search(text)
    return tuple(re.findall(r"\d+", found[0])) if found else None


def final_ratio(completion: str) -> tuple[str, ...] | None:
    """The completion's final answer as `a:b` (its last box, or GSM8K's answer line: written so, or ending so, as
    `3:1 (boys to girls)` or `2:30 PM`), else the `a:b` that ends a completion that has neither; None where there is
    none. math-verify reads `3:1` as 3 and `2:30` as 1/15: a ground truth written `a:b` is answered by the same digits
    (`6:2` is no `3:1`, `1:15` no `2:30`, `12:5` no `12:05`), and by no `a:b` a number follows (`the ratio is 3:1; after
    adding, it becomes 5`)."""
    completion = _ratio_signs(completion.replace("\u2212", "-"))
    answer = final_answer(completion)
    if answer != completion:
        return ratio(answer) or _last_ratio(answer)
    return _last_ratio(completion)


def numeric_literal(answer: str) -> bool:
    """Whether an extracted answer is a number as written (`-1,234.5`, `\\frac{3}{4}`, `2\\frac{1}{2}`, `3/4`, `50\\%`,
    `x = 5`, `18 \\times 3 = 54`, `18 \\text{ dollars}`, `1.2 \\times 10^{3}`, `10^{6}`), not an expression still to
    evaluate (`9 + 10`, `6 \\times 7`, `\\binom{10}{3}`, `2^{10}`, `\\frac{38}{2}`, `12 \\times 10^{2}`): where the ground
    truth is a number, a completion restating the question's arithmetic is no answer, or a policy learns to restate it."""
    if re.search(r"\d\s*(?:\\[,;: ]|~)\s*\d", joined_digit_groups(answer)):  # LaTeX's spacing left between digits (no thousands groups): math-verify
        return False  # multiplies them, `01\\,000` as 01 × 000 and `3.141\\,59` as 3.141 × 59
    text = _bare(answer)
    if re.fullmatch(rf"(?:{_NUMBER})(?:[eE][-+]?\d+)?", text) or re.fullmatch(r"[-+]?10\^\{?[-+]?\d+\}?", text):
        return True
    if scientific := re.fullmatch(rf"({_NUMBER})\s*(?:\\times|\\cdot|\*)\s*10\^\{{?[-+]?\d+\}}?", text):
        return 1 <= abs(float(scientific[1].replace(",", ""))) < 10  # normalised, not `12 \times 10^{2}` still to multiply
    if fraction := _FRACTION.fullmatch(text):  # in lowest terms, not `\frac{38}{2}` still to divide; a mixed number proper
        _, whole, *parts = fraction.groups()
        numerator, denominator = (int(next(p for p in pair if p is not None)) for pair in ((parts[0], parts[1], parts[4]), (parts[2], parts[3], parts[5])))
        return denominator > 1 and math.gcd(numerator, denominator) == 1 and (whole is None or abs(numerator) < denominator)
    return False
