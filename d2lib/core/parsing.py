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
  (``"s - e, caption."`` …) both give the same result.

>>> parse_spans("The event happens in 12.5 - 18 seconds.")
([[12.5, 18.0]], 'range')
>>> split_evidence("3 - 7</evi>The event happens in 3 - 8.")
('3 - 7', 'The event happens in 3 - 8.', True)
>>> parse_option("Best Option: (B) a red square")
(1, 'paren')
"""
from __future__ import annotations

import re

from d2lib.core.spans import order_span

__all__ = [
    "EVIDENCE_DELIMITER",
    "to_seconds",
    "parse_spans",
    "parse_dense_captions",
    "strip_option_prefix",
    "parse_option",
    "split_evidence",
]

EVIDENCE_DELIMITER = "</evi>"

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


def to_seconds(token: str) -> float:
    """A time token in seconds: ``"12.5"``, ``"1:05"`` (m:ss) or ``"1:02:05"`` (h:mm:ss).

    >>> to_seconds("75"), to_seconds("1:15"), to_seconds("1:02:05.5")
    (75.0, 75.0, 3725.5)
    """
    value = 0.0
    for field in token.split(":"):
        value = value * 60 + float(field)
    return value


def _ordered(pairs) -> list[list[float]]:
    return [order_span((to_seconds(s), to_seconds(e)))[0] for s, e in pairs]


def parse_spans(text: str | None) -> tuple[list[list[float]] | None, str]:
    """All spans in an answer, each reordered so ``start <= end``; ``(spans | None, path)``.

    Paths, tried in order (E.T. Bench ``tvg_format``):

    * ``"range"`` — every ``a - b`` (``"12 - 18"``, ``"12.5-18"``, ``"0:12 - 0:18"``);
    * ``"to"`` — every ``a to b``;
    * ``"keyword"`` — the first time of each sentence (split at ``! ? newline``) that mentions a keyword
      (start, end, happen…), paired consecutively (an odd last time is dropped);
    * failures: ``"empty"`` (no text) or ``"none"``.

    The range regex also matches hyphenated non-times ("2-3 people"), exactly as the official one.
    Callers that need one span (tvg, epm, tem, gvq) take the first.

    >>> parse_spans("From 0:12 - 0:18.")
    ([[12.0, 18.0]], 'range')
    >>> parse_spans("It happens from 18 to 12.5")
    ([[12.5, 18.0]], 'to')
    >>> parse_spans("Start time: 1:05\\nEnd time: 1:20")
    ([[65.0, 80.0]], 'keyword')
    >>> parse_spans("no idea"), parse_spans("")
    ((None, 'none'), (None, 'empty'))
    """
    if not text or not text.strip():
        return None, "empty"
    t = text.lower()
    for regex, path in ((_RANGE, "range"), (_TO, "to")):
        found = regex.findall(t)
        if found:
            return _ordered(found), path
    times = []
    for sentence in re.split(r"[!?\n]", t):
        if any(k in sentence for k in _KEYWORDS):
            m = _TOKEN.search(sentence)
            if m:
                times.append(m.group(1))
    if len(times) >= 2:
        return _ordered(zip(times[0::2], times[1::2])), "keyword"
    return None, "none"


def _widen(t: float) -> list[float]:
    return [t - _WIDEN, t + _WIDEN] if t > _WIDEN else [t, t + 2 * _WIDEN]


def _line_time(time_part: str) -> tuple[list[float] | None, str]:
    """Time of one line in the line fallback: a range, two times, or one time widened by ±20 s."""
    m = _RANGE.search(time_part)
    if m:
        return _ordered([m.groups()])[0], "line_range"
    found = _CLOCK_RE.findall(time_part)
    if len(found) not in (1, 2):
        found = _NUM_RE.findall(time_part)
    if len(found) == 1:
        return _widen(to_seconds(found[0])), "line_widened"
    if len(found) == 2:
        return _ordered([found])[0], "line_pair"
    return None, "none"


def _clean_caption(piece: str) -> str:
    return piece.strip().strip(", ").rstrip()


def parse_dense_captions(text: str | None) -> tuple[list[list[float]] | None, list[str] | None, str]:
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
    * failures: ``"empty"`` or ``"none"``.

    Times are rounded to 0.01 s and each span reordered so ``start <= end``.

    >>> parse_dense_captions("0 - 5, a man cuts onions. 5 - 12, he fries them.")
    ([[0.0, 5.0], [5.0, 12.0]], ['a man cuts onions.', 'he fries them.'], 'range')
    >>> parse_dense_captions("0 - 5, ok 5 - 9, he fries them.")  # ', ok ' has 5 chars: pair dropped
    ([[5.0, 9.0]], ['he fries them.'], 'range')
    >>> parse_dense_captions("At 42 seconds, a man fries onions.")
    ([[22.0, 62.0]], ['a man fries onions.'], 'line_widened')
    >>> parse_dense_captions("start time 3, end time 9, a man")
    (None, None, 'start_end_unsupported')
    """
    if not text or not text.strip():
        return None, None, "empty"
    t = text.lower()
    matches = list(_RANGE.finditer(t))
    if matches:
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
        starts, ends = _FIELD_START.findall(t), _FIELD_END.findall(t)
        if starts and ends:
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


def parse_option(text: str | None, n_options: int = 4, allow_paren: bool = True) -> tuple[int | None, str]:
    """Option index from an MCQ answer, strict: the first letter parsed is final, right or wrong.

    Paths: ``"paren"`` — a valid ``(X)`` anywhere (rar/eca/rvq; ``allow_paren=False`` for gvq, whose
    official parser has no such rule); ``"leading"`` — after :func:`strip_option_prefix`, a valid
    letter followed by end of text, ``.``, ``,``, space or ``)``; otherwise ``(None, "empty")`` or
    ``(None, "none")`` — the caller may then fall back to sentence similarity (E.T. Bench does).

    >>> parse_option("(D) a green star."), parse_option("c. a blue circle")
    ((3, 'paren'), (2, 'leading'))
    >>> parse_option("I think it is the red square"), parse_option("(E)", n_options=4)
    ((None, 'none'), (None, 'none'))
    """
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


def split_evidence(text: str | None, delimiter: str = EVIDENCE_DELIMITER) -> tuple[str, str, bool]:
    """Split a factorized answer at ``</evi>``: ``(evidence_part, answer_part, ok)``.

    The evidence part is the text before the first delimiter, the answer part the text after the last
    one (as D²VLM's evaluator). Without a delimiter: ``("", text, False)`` — D²VLM then counts
    grounding as a parse failure, while option letters are still read from the whole text.

    >>> split_evidence("0 - 4 6 - 9</evi>0 - 4, a red square appears.")
    ('0 - 4 6 - 9', '0 - 4, a red square appears.', True)
    >>> split_evidence("The event happens in 3 - 7.")
    ('', 'The event happens in 3 - 7.', False)
    """
    text = text or ""
    if delimiter not in text:
        return "", text, False
    parts = text.split(delimiter)
    return parts[0], parts[-1], True
