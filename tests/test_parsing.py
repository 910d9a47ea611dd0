"""Parsers of free-text answers (lesson 06_evaluation): spans, dense captions, option letters, </evi>."""
import pytest

from d2lib.core.parsing import (
    parse_dense_captions,
    parse_option,
    parse_spans,
    split_evidence,
    strip_option_prefix,
    to_seconds,
)


# ---------------------------------------------------------------------------------------------- spans
@pytest.mark.parametrize(
    "text, spans, path",
    [
        ("The event happens in 12 - 18.", [[12.0, 18.0]], "range"),
        ("The event happens in 12.5-18 seconds", [[12.5, 18.0]], "range"),
        ("The event happens in 18 - 12.", [[12.0, 18.0]], "range"),  # reordered start <= end
        ("0 - 4 and 6 - 9", [[0.0, 4.0], [6.0, 9.0]], "range"),  # all spans, in order
        ("From 1:02:05 - 1:02:10", [[3725.0, 3730.0]], "range"),  # h:mm:ss
        ("From 0:12 - 0:18", [[12.0, 18.0]], "range"),  # m:ss (official regex would read 12 - 0)
        ("It happens from 12.5 to 18", [[12.5, 18.0]], "to"),
        ("Start time: 12\nEnd time: 18", [[12.0, 18.0]], "keyword"),
        ("The event starts at 0:12!It ends at 0:20", [[12.0, 20.0]], "keyword"),
        ("There are 2-3 people", [[2.0, 3.0]], "range"),  # official quirk kept: hyphenated numbers
        ("The event happens in 3 - 3.", [[3.0, 3.0]], "range"),  # zero-length span is still a span
    ],
)
def test_parse_spans(text, spans, path):
    assert parse_spans(text) == (spans, path)


@pytest.mark.parametrize(
    "text, path",
    [
        ("", "empty"),
        (None, "empty"),
        ("   ", "empty"),
        ("I cannot tell.", "none"),
        ("It starts at 5.", "none"),  # a single keyword time cannot make a span
        ("The event starts at 5 and ends at 9.", "none"),  # one sentence gives only its first time
        (" The event happens in 14 - - 15.", "none"),  # "14 - - 15" is no range; one keyword time, no pair
    ],
)
def test_parse_spans_failures(text, path):
    assert parse_spans(text) == (None, path)


def test_to_seconds():
    # 1 h 2 min 5.5 s = 3600 + 120 + 5.5
    assert to_seconds("1:02:05.5") == 3725.5
    assert to_seconds("2:30") == 150.0
    assert to_seconds("7") == 7.0


# -------------------------------------------------------------------------------------- dense captions
def test_dense_captions_d2vlm_answer():
    # The factorized answer part, with each <evi> shown as "s - e".
    spans, caps, path = parse_dense_captions("0 - 5, a red square appears. 5 - 12, a blue circle moves left.")
    assert path == "range"
    assert spans == [[0.0, 5.0], [5.0, 12.0]]
    assert caps == ["a red square appears.", "a blue circle moves left."]


def test_dense_captions_seconds_newlines_and_preamble():
    text = "Here are the events:\n0 - 5 seconds, Chop the onions.\n5.25 - 12 seconds: fry them"
    spans, caps, path = parse_dense_captions(text)
    # the preamble before the first span is ignored; "seconds" removed; lower-cased as the official parser
    assert (spans, caps, path) == ([[0.0, 5.0], [5.25, 12.0]], ["chop the onions.", ": fry them"], "range")


def test_dense_captions_short_caption_drops_its_pair():
    # ", ok " has 5 characters (<= 5): that pair is dropped, the others keep their own captions.
    spans, caps, _ = parse_dense_captions("0 - 5, ok 5 - 9, he fries them. 9 - 12")
    assert spans == [[5.0, 9.0]] and caps == ["he fries them."]


def test_dense_captions_fields():
    text = ("start time: 0 seconds, end time: 5 seconds\ndescription: a man chops onions\n"
            "start time: 5, end time: 9\ndescription: he fries them")
    # No "a - b" in the text, so the field form is read; captions from "description:" lines.
    assert parse_dense_captions(text) == ([[0.0, 5.0], [5.0, 9.0]], ["a man chops onions", "he fries them"],
                                          "fields")


def test_dense_captions_unsupported_start_end_form_fails():
    # In the official code this form raises inside the parser: the sample counts as failed.
    assert parse_dense_captions("start time 3, end time 9, a man chops onions") == (
        None, None, "start_end_unsupported")


@pytest.mark.parametrize(
    "text, span, caption, path",
    [
        # t = 42 > 20: [42 - 20, 42 + 20]; the caption is the text after "seconds"
        ("At 42 seconds, a man fries onions.", [22.0, 62.0], "a man fries onions.", "line_widened"),
        # t = 12 <= 20: [12, 12 + 40]
        ("At 12 seconds, a man fries onions.", [12.0, 52.0], "a man fries onions.", "line_widened"),
        # m:ss 1:10 = 70 s -> [50, 90]; no "seconds", so the whole line is the caption (official behaviour)
        ("At 1:10, a man fries onions.", [50.0, 90.0], "At 1:10, a man fries onions.", "line_widened"),
        ("Between 12 and 18 seconds, a man fries onions.", [12.0, 18.0], "a man fries onions.", "line_pair"),
    ],
)
def test_dense_captions_line_fallback(text, span, caption, path):
    assert parse_dense_captions(text) == ([span], [caption], path)


def test_dense_captions_line_fallback_gives_one_event():
    text = "At 42 seconds, a man fries onions\nAt 60 seconds, he serves the dish"
    spans, caps, path = parse_dense_captions(text)
    assert spans == [[22.0, 62.0]] and caps == ["a man fries onions"] and path == "line_widened"


@pytest.mark.parametrize("text, path", [("", "empty"), (None, "empty"), ("nothing useful here", "none"),
                                        ("0 - 5", "none")])
def test_dense_captions_failures(text, path):
    assert parse_dense_captions(text) == (None, None, path)


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "text, expected",
    [
        ("(B) a blue circle", (1, "paren")),
        ("The answer is (c).", (2, "paren")),
        ("Best Option: (D) a green star", (3, "paren")),
        ("Best option: (D", (3, "leading")),  # prompt ended with "Best Option: (" — model wrote "D"
        ("B", (1, "leading")),
        ("b. a blue circle", (1, "leading")),
        ("C, because it moves", (2, "leading")),
        ("a) red", (0, "leading")),
        ("A red square", (0, "leading")),  # official rule: a leading "A " reads as option A
        ("(F) nothing", (None, "none")),  # not one of the 4 options
        ("I think the red one", (None, "none")),
        ("", (None, "empty")),
        ("Best option: (", (None, "empty")),
    ],
)
def test_parse_option(text, expected):
    assert parse_option(text, n_options=4) == expected


def test_parse_option_is_strict_and_gvq_has_no_paren_rule():
    # Strict: the first letter parsed is final even when the text matches another option.
    assert parse_option("(A) a blue circle") == (0, "paren")
    # gvq's official parser has no "(X) anywhere" rule.
    assert parse_option("The answer is (B).", allow_paren=False) == (None, "none")
    assert parse_option("(B) blue.", allow_paren=False) == (1, "leading")
    assert parse_option("E", n_options=5) == (4, "leading")


def test_strip_option_prefix():
    assert strip_option_prefix("Best option:  (b) blue") == "b) blue"


# ---------------------------------------------------------------------------------------------- </evi>
def test_split_evidence():
    assert split_evidence("3 - 7</evi>It happens in 3 - 8.") == ("3 - 7", "It happens in 3 - 8.", True)
    assert split_evidence("</evi>(C) a green star.") == ("", "(C) a green star.", True)
    assert split_evidence("plain answer") == ("", "plain answer", False)
    assert split_evidence(None) == ("", "", False)
    # several delimiters: evidence before the first, answer after the last
    assert split_evidence("1 - 2</evi>x</evi>3 - 4") == ("1 - 2", "3 - 4", True)


# ------------------------------------------------------------------------- odd times and non-text answers
@pytest.mark.parametrize(
    "text, expected",
    [
        # scientific notation is no time: the range regex would read "3 - 2" out of it (E.T. Bench does)
        ("1e3 - 2e3", (None, "invalid_time")),
        ("The event happens in 5 - 10e3.", (None, "invalid_time")),  # "10" is the mantissa of 10e3
        ("from 1e3 to 2e3", (None, "invalid_time")),
        ("Start time: 1e3\nEnd time: 2e3", (None, "invalid_time")),
        # a clock field after the first must be < 60: not 99 s and 159 s
        ("0:99 - 1:99", (None, "invalid_time")),
        ("0:60 - 1:00", (None, "invalid_time")),
        ("1:59:59 - 1:60:00", (None, "invalid_time")),
        ("75:30 - 76:00", ([[4530.0, 4560.0]], "range")),  # m:ss: the minutes field is unbounded
        # a number too large for a float is no time (it was read as inf)
        ("The event happens in 0 - " + "9" * 400 + ".", (None, "invalid_time")),
        ("0." + "9" * 400 + " - 2", ([[1.0, 2.0]], "range")),  # 400 digits of fraction: a finite number
        # the minus sign is never read (E.T. Bench's regex; the parity fixture pins "-1 - 8")
        ("-5 - -1", (None, "none")),
        ("The evidence is in -1 - 8.", ([[1.0, 8.0]], "range")),
        ("scene3 - 5", ([[3.0, 5.0]], "range")),  # a letter before a number is not an exponent
    ],
)
def test_parse_spans_odd_times(text, expected):
    assert parse_spans(text) == expected


@pytest.mark.parametrize("answer", [5, 0, 3.5, float("nan"), float("inf"), [1, 2], [], {"a": 1}, {}, b"3 - 7"])
def test_non_text_answers_are_a_failure_of_every_parser(answer):
    assert parse_spans(answer) == (None, "not_text")
    assert parse_dense_captions(answer) == (None, None, "not_text")
    assert parse_option(answer) == (None, "not_text")
    assert split_evidence(answer) == ("", "", False)


@pytest.mark.parametrize(
    "text, path",
    [
        ("0 - 5, a man cuts onions. 1e3 - 2e3, he fries them.", "invalid_time"),  # one bad range fails all
        ("0:05 - 0:99, a man cuts onions.", "invalid_time"),
        ("start time: 0:75, end time: 5\ndescription: a man chops onions", "invalid_time"),
        ("At 1e3 seconds, a man fries onions.", "invalid_time"),  # line fallback
        ("At 0:99, a man fries onions.", "invalid_time"),
        ("At " + "9" * 400 + " seconds, a man fries onions.", "invalid_time"),
    ],
)
def test_dense_captions_odd_times_fail(text, path):
    assert parse_dense_captions(text) == (None, None, path)
