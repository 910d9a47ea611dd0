"""Parsing free-text model answers: spans, dense-caption lists, option letters, the ``</evi>`` split.

Taught in lesson ``06_evaluation``. Every parser is a pure function of the text and returns, next to
the parsed value, the *path* that produced it (``"range"``, ``"keyword"``, ``"line_widened"``, …,
or a failure reason such as ``"none"``/``"empty"``), so that evaluation can report a parse-failure
count and a histogram of how answers were read, per task.

The rules follow the E.T. Bench evaluator (``tvg_format``/``dvc_format``/MCQ) and the ``</evi>`` split
of D²VLM's evaluator (``new_compute_metrics.py``). Deliberate, documented differences from the official
code (all of them, per evaluator and with their tests, in ``docs/METRICS.md``):

* clock times (``m:ss``, ``h:mm:ss``) are read as times in every path — the official range regex reads
  ``"0:12 - 0:18"`` as ``12 - 0``, and its clock fallback knows only ``h:mm:ss``;
* dense captions are aligned by position (each span takes the text that follows it, up to the next
  span); the official code filters the caption list and then truncates both lists, so a long preamble
  or a dropped short caption shifts every later caption onto the wrong span. On well-formed answers
  (``"s - e, caption."`` …) both give the same result;
* an *impossible time* fails the answer (path ``"invalid_time"``) where the official code reads a wrong
  number: a piece of a number in scientific notation (``"1e3 - 2e3"``: the range regex would read
  ``3 - 2``), a clock whose minutes or seconds field is 60 or more (``"0:99 - 1:99"``: not read as 99 s
  and 159 s), a number too large for a float (a 400-digit number: not read as ``inf``). The parser
  never guesses another reading: once a path reads an impossible time, the answer fails.

What the parsers keep from the official code on purpose (the parity tests pin it): times are unsigned —
a minus sign is never read, so ``"-1 - 8"`` reads ``1 - 8`` and ``"-5 - -1"`` is no range at all
(``"none"``); hyphenated numbers read as ranges (``"2-3 people"``).

Every parser takes any value: a non-string answer (``5``, ``[1, 2]``, ``{}``, ``nan``) is a failure
with path ``"not_text"``; ``None`` is ``"empty"``. Evaluation counts both as parse failures.

>>> parse_spans("The event happens in 12.5 - 18 seconds.")
([[12.5, 18.0]], 'range')
>>> split_evidence("3 - 7</evi>The event happens in 3 - 8.")
('3 - 7', 'The event happens in 3 - 8.', True)
>>> parse_option("Best Option: (B) a red square")
(1, 'paren')
"""
from __future__ import annotations

import math
import re

from d2lib.core.spans import order_span

__all__ = [
    "EVIDENCE_DELIMITER",
    "NOT_TEXT",
    "INVALID_TIME",
    "is_not_text",
    "to_seconds",
    "parse_spans",
    "parse_dense_captions",
    "strip_option_prefix",
    "parse_option",
    "split_evidence",
]

EVIDENCE_DELIMITER = "</evi>"
NOT_TEXT = "not_text"  # failure path: the answer is not a string (None is "empty")
INVALID_TIME = "invalid_time"  # failure path: the path read an impossible time (module docstring)

# A time is a clock (m:ss, h:mm:ss, optional fraction) or a plain number of seconds.
_CLOCK = r"\d+(?::\d{2}){1,2}(?:\.\d+)?"
_NUM = r"\d+(?:\.\d+)?"
_TIME = rf"(?:{_CLOCK}|{_NUM})"
_RANGE = re.compile(rf"({_TIME})\s*-\s*({_TIME})")
_TO = re.compile(rf"({_TIME})\s+to\s+({_TIME})")
_TOKEN = re.compile(rf"(?<![\w.:])({_TIME})(?![\d:])")
_CLOCK_RE = re.compile(_CLOCK)
_NUM_RE = re.compile(_NUM)
# Same keyword list as E.T. Bench (substring match, so "start" also covers "starts", "starting").
_KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")
_FIELD_START = re.compile(rf"start(?:ing)? time: ({_TIME})(?:s| seconds)?")
_FIELD_END = re.compile(rf"end(?:ing)? time: ({_TIME})(?:s| seconds)?")
_START_END_COMMA = re.compile(rf"start time ({_TIME}), end time ({_TIME})")
_MIN_CAPTION_CHARS = 5  # captions of <= 5 characters are dropped (E.T. Bench)
_MIN_LINE_CHARS = 7  # line fallback: lines of <= 7 characters are skipped (E.T. Bench)
_WIDEN = 20.0  # line fallback: a single time t becomes [t-20, t+20] (or [t, t+40] when t <= 20)
_SCI_AFTER = re.compile(r"[eE][-+]?\d")  # a time token followed by an exponent: "1" of "1e3"
_SCI_BEFORE = re.compile(r"\d[eE][-+]?$")  # a time token that is an exponent: "3" of "1e3"


def is_not_text(answer) -> bool:
    """Is ``answer`` something other than a string or ``None`` (a parse failure, path ``"not_text"``)?

    >>> is_not_text("3 - 7"), is_not_text(None), is_not_text(5), is_not_text(float("nan"))
    (False, False, True, True)
    """
    return answer is not None and not isinstance(answer, str)


def to_seconds(token: str) -> float:
    """A time token in seconds: ``"12.5"``, ``"1:05"`` (m:ss) or ``"1:02:05"`` (h:mm:ss).

    >>> to_seconds("75"), to_seconds("1:15"), to_seconds("1:02:05.5")
    (75.0, 75.0, 3725.5)
    """
    value = 0.0
    for field in token.split(":"):
        value = value * 60 + float(field)
    return value


def _readable(text: str, start: int, end: int) -> bool:
    """Is the time token ``text[start:end]`` a time? Not when it is part of a number in scientific
    notation (the ``1`` or ``3`` of ``1e3``), when a clock field after the first is 60 or more
    (``0:99``), or when its value is not finite (a 400-digit number overflows to ``inf``).

    >>> [_readable(t, 0, len(t)) for t in ("0:99", "75:30", "1:02:05", "9" * 400)]
    [False, True, True, False]
    >>> _readable("1e3", 0, 1), _readable("1e3", 2, 3), _readable("scene3", 5, 6)
    (False, False, True)
    """
    token = text[start:end]
    if _SCI_AFTER.match(text, end) or _SCI_BEFORE.search(text[max(0, start - 3):start]):
        return False
    if any(float(field) >= 60 for field in token.split(":")[1:]):
        return False
    return math.isfinite(to_seconds(token))


def _all_readable(text: str, matches, groups=(1, 2)) -> bool:
    return all(_readable(text, *m.span(g)) for m in matches for g in groups)


def _ordered(pairs) -> list[list[float]]:
    return [order_span((to_seconds(s), to_seconds(e)))[0] for s, e in pairs]


def parse_spans(text) -> tuple[list[list[float]] | None, str]:
    """All spans in an answer, each reordered so ``start <= end``; ``(spans | None, path)``.

    Paths, tried in order (E.T. Bench ``tvg_format``):

    * ``"range"`` — every ``a - b`` (``"12 - 18"``, ``"12.5-18"``, ``"0:12 - 0:18"``);
    * ``"to"`` — every ``a to b``;
    * ``"keyword"`` — the first time of each sentence (split at ``! ? newline``) that mentions a keyword
      (start, end, happen…), paired consecutively (an odd last time is dropped);
    * failures: ``"empty"`` (no text, or ``None``), ``"not_text"`` (not a string), ``"invalid_time"``
      (the path read an impossible time, see below) or ``"none"``.

    The range regex also matches hyphenated non-times ("2-3 people"), exactly as the official one.
    Callers that need one span (tvg, epm, tem, gvq) take the first.

    Deliberate choices on odd times (module docstring):

    * ``"1e3 - 2e3"`` → ``"invalid_time"``: scientific notation is not a time, and the range regex
      would read ``3 - 2`` out of it (the official parser does);
    * ``"0:99 - 1:99"`` → ``"invalid_time"``: a clock field after the first must be below 60 (the
      minutes of ``h:mm:ss``, the seconds of ``m:ss``; ``"75:30"`` is 75 min 30 s);
    * a number too large for a float (400 digits) → ``"invalid_time"``, never ``inf``;
    * ``"-5 - -1"`` → ``"none"`` and ``"-1 - 8"`` → ``[[1, 8]]``: a minus sign is never read as a sign,
      as in E.T. Bench's regex (the parity fixture pins ``-1 - 8``), so times are never negative.

    >>> parse_spans("From 0:12 - 0:18.")
    ([[12.0, 18.0]], 'range')
    >>> parse_spans("It happens from 18 to 12.5")
    ([[12.5, 18.0]], 'to')
    >>> parse_spans("Start time: 1:05\\nEnd time: 1:20")
    ([[65.0, 80.0]], 'keyword')
    >>> parse_spans("no idea"), parse_spans(""), parse_spans(5)
    ((None, 'none'), (None, 'empty'), (None, 'not_text'))
    >>> parse_spans("1e3 - 2e3"), parse_spans("0:99 - 1:99"), parse_spans("-5 - -1"), parse_spans("-1 - 8")
    ((None, 'invalid_time'), (None, 'invalid_time'), (None, 'none'), ([[1.0, 8.0]], 'range'))
    """
    if is_not_text(text):
        return None, NOT_TEXT
    if not text or not text.strip():
        return None, "empty"
    t = text.lower()
    for regex, path in ((_RANGE, "range"), (_TO, "to")):
        found = list(regex.finditer(t))
        if found:
            if not _all_readable(t, found):
                return None, INVALID_TIME
            return _ordered(m.groups() for m in found), path
    times = []
    for sentence in re.split(r"[!?\n]", t):
        if any(k in sentence for k in _KEYWORDS):
            m = _TOKEN.search(sentence)
            if m:
                if not _readable(sentence, *m.span(1)):
                    return None, INVALID_TIME
                times.append(m.group(1))
    if len(times) >= 2:
        return _ordered(zip(times[0::2], times[1::2])), "keyword"
    return None, "none"


def _widen(t: float) -> list[float]:
    return [t - _WIDEN, t + _WIDEN] if t > _WIDEN else [t, t + 2 * _WIDEN]


def _line_time(time_part: str) -> tuple[list[float] | None, str]:
    """Time of one line in the line fallback: a range, two times, or one time widened by ±20 s
    (``(None, "invalid_time")`` when the time it would read is impossible)."""
    m = _RANGE.search(time_part)
    if m:
        if not _all_readable(time_part, [m]):
            return None, INVALID_TIME
        return _ordered([m.groups()])[0], "line_range"
    tokens = list(_CLOCK_RE.finditer(time_part))
    if len(tokens) not in (1, 2):
        tokens = list(_NUM_RE.finditer(time_part))
    if len(tokens) in (1, 2) and not _all_readable(time_part, tokens, groups=(0,)):
        return None, INVALID_TIME
    found = [m.group(0) for m in tokens]
    if len(found) == 1:
        return _widen(to_seconds(found[0])), "line_widened"
    if len(found) == 2:
        return _ordered([found])[0], "line_pair"
    return None, "none"


def _clean_caption(piece: str) -> str:
    return piece.strip().strip(", ").rstrip()


def parse_dense_captions(text) -> tuple[list[list[float]] | None, list[str] | None, str]:
    """Dense-caption list ``(spans, captions, path)``, aligned 1:1; ``(None, None, reason)`` on failure.

    Paths, tried in order (E.T. Bench ``dvc_format``):

    * ``"range"`` — each ``a - b`` span takes the text that follows it up to the next span (the word
      "seconds" removed, newlines as spaces); pairs whose raw caption text has <= 5 characters are
      dropped, and the caption is stripped of spaces and ", ";
    * ``"fields"`` — ``start time: x … end time: y`` pairs, captions from ``description: …`` lines
      (or ``* …`` bullets), both lists truncated to the shorter (only when no ``a - b`` exists);
    * ``"start_end_unsupported"`` (failure) — ``start time x, end time y``: in the official code this
      form raises inside the parser and the sample counts as failed, so it fails here too;
    * line fallback (when the above give nothing): lines (or, without newlines, '.'-sentences) longer
      than 7 characters; the first one with a time gives **one** event — ``"line_range"``,
      ``"line_pair"`` (two times) or ``"line_widened"`` (a single time ``t`` becomes ``[t-20, t+20]``,
      or ``[t, t+40]`` when ``t <= 20``: a manufactured span); its caption is the text after "seconds";
    * failures: ``"empty"``, ``"not_text"``, ``"invalid_time"`` (the path that reads the answer met an
      impossible time — :func:`parse_spans` lists them — anywhere in it) or ``"none"``.

    Times are rounded to 0.01 s and each span reordered so ``start <= end``.

    >>> parse_dense_captions("0 - 5, a man cuts onions. 5 - 12, he fries them.")
    ([[0.0, 5.0], [5.0, 12.0]], ['a man cuts onions.', 'he fries them.'], 'range')
    >>> parse_dense_captions("0 - 5, ok 5 - 9, he fries them.")  # ', ok ' has 5 chars: pair dropped
    ([[5.0, 9.0]], ['he fries them.'], 'range')
    >>> parse_dense_captions("At 42 seconds, a man fries onions.")
    ([[22.0, 62.0]], ['a man fries onions.'], 'line_widened')
    >>> parse_dense_captions("start time 3, end time 9, a man")
    (None, None, 'start_end_unsupported')
    >>> parse_dense_captions("0 - 5, a man cuts onions. 0:70 - 0:80, he fries them.")
    (None, None, 'invalid_time')
    """
    if is_not_text(text):
        return None, None, NOT_TEXT
    if not text or not text.strip():
        return None, None, "empty"
    t = text.lower()
    matches = list(_RANGE.finditer(t))
    if matches:
        if not _all_readable(t, matches):
            return None, None, INVALID_TIME
        spans, caps = [], []
        for i, m in enumerate(matches):
            stop = matches[i + 1].start() if i + 1 < len(matches) else len(t)
            piece = t[m.end():stop].replace("seconds", "").replace("\n", " ")
            if len(piece) > _MIN_CAPTION_CHARS:
                spans.append(_ordered([m.groups()])[0])
                caps.append(_clean_caption(piece))
        if spans:
            return [[round(s, 2), round(e, 2)] for s, e in spans], caps, "range"
    else:
        starts, ends = list(_FIELD_START.finditer(t)), list(_FIELD_END.finditer(t))
        if starts and ends:
            if not _all_readable(t, starts + ends, groups=(1,)):
                return None, None, INVALID_TIME
            starts, ends = [m.group(1) for m in starts], [m.group(1) for m in ends]
            caps = re.findall(r"description: (.*)", t) or re.findall(r"\*\s*(.*)", t)
            caps = [_clean_caption(c) for c in caps if len(c) > _MIN_CAPTION_CHARS]
            spans = _ordered(zip(starts, ends))[: len(caps)]
            if spans:
                return [[round(s, 2), round(e, 2)] for s, e in spans], caps[: len(spans)], "fields"
        elif _START_END_COMMA.search(t):
            return None, None, "start_end_unsupported"
    if "\n" in text:
        lines = [line for line in text.split("\n") if len(line) > _MIN_LINE_CHARS]
    else:
        lines = [s + "." for s in text.split(".") if len(s) > _MIN_LINE_CHARS]
    for line in lines:
        parts = [p.strip(",") for p in line.split("seconds")]
        span, path = _line_time(parts[0])
        if path == INVALID_TIME:
            return None, None, INVALID_TIME
        if span is not None:
            return [[round(span[0], 2), round(span[1], 2)]], [parts[-1].strip()], path
    return None, None, "none"


def strip_option_prefix(text: str) -> str:
    """Lower-case, drop a leading ``"best option:"`` and a leading ``"("`` (E.T. Bench MCQ).

    >>> strip_option_prefix("Best Option: (C) a blue circle")
    'c) a blue circle'
    """
    t = text.lower()
    if t.startswith("best option:"):
        t = t[len("best option:"):]
    return t.lstrip().lstrip("(").lstrip()


def parse_option(text, n_options: int = 4, allow_paren: bool = True) -> tuple[int | None, str]:
    """Option index from an MCQ answer, strict: the first letter parsed is final, right or wrong.

    Paths: ``"paren"`` — a valid ``(X)`` anywhere (rar/eca/rvq; ``allow_paren=False`` for gvq, whose
    official parser has no such rule); ``"leading"`` — after :func:`strip_option_prefix`, a valid
    letter followed by end of text, ``.``, ``,``, space or ``)``; otherwise ``(None, "empty")``,
    ``(None, "not_text")`` (not a string) or ``(None, "none")`` — on ``"none"`` the caller may fall back
    to sentence similarity (E.T. Bench does).

    >>> parse_option("(D) a green star."), parse_option("c. a blue circle")
    ((3, 'paren'), (2, 'leading'))
    >>> parse_option("I think it is the red square"), parse_option("(E)", n_options=4)
    ((None, 'none'), (None, 'none'))
    """
    if is_not_text(text):
        return None, NOT_TEXT
    if text is None or not text.strip():
        return None, "empty"
    letters = "abcdefghij"[:n_options]
    if allow_paren:
        m = re.search(r"\(([A-Za-z])\)", text)
        if m and m.group(1).lower() in letters:
            return letters.index(m.group(1).lower()), "paren"
    t = strip_option_prefix(text)
    if not t:
        return None, "empty"
    if (len(t) == 1 or t[1] in (".", ",", " ", ")")) and t[0] in letters:
        return letters.index(t[0]), "leading"
    return None, "none"


def split_evidence(text, delimiter: str = EVIDENCE_DELIMITER) -> tuple[str, str, bool]:
    """Split a factorized answer at ``</evi>``: ``(evidence_part, answer_part, ok)``.

    The evidence part is the text before the first delimiter, the answer part the text after the last
    one (as D²VLM's evaluator). Without a delimiter: ``("", text, False)`` — D²VLM then counts
    grounding as a parse failure, while option letters are still read from the whole text. ``None``
    and a non-string (:func:`is_not_text`) give ``("", "", False)``.

    >>> split_evidence("0 - 4 6 - 9</evi>0 - 4, a red square appears.")
    ('0 - 4 6 - 9', '0 - 4, a red square appears.', True)
    >>> split_evidence("The event happens in 3 - 7.")
    ('', 'The event happens in 3 - 7.', False)
    """
    if text is None or is_not_text(text):
        return "", "", False
    if delimiter not in text:
        return "", text, False
    parts = text.split(delimiter)
    return parts[0], parts[-1], True
