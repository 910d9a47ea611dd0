"""How a video-LLM is told *when* — the time representations of the peer systems (lesson ``08_peers``).

D²VLM points at frames with ``<evi>`` tokens; the peers write or show time in other ways. Each one is a
switch on :class:`d2lib.vlm.model.Variant` (defaults off) and lives here as small pure functions;
:class:`PeerTimes` puts a variant's switches behind the core's time-representation hooks
(:class:`d2lib.vlm.tokens.TimeRep`): it is what the core resolves a variant with a time switch on to
(:data:`d2lib.vlm.tokens.TIME_PLUGIN`):

- **NumPro** (``frame_numbers``): the frame number drawn onto each frame in red digits at the bottom
  right (:func:`draw_frame_numbers`, our own 3×5 pixel font scaled to the frame — no font download),
  one prompt line says so (:func:`prompt_question`); with ``time_format="frame_number"`` answers say
  "from x to y" in frame numbers.
- **VTimeLLM** (``time_format="relative"``): times are two-digit indices 00–99 of the video
  (:func:`to_relative` / :func:`from_relative`), rescaled to seconds when read back.
- **VTG-LLM** (``time_format="time_tokens"``): absolute times spelt with dedicated tokens
  ``<t0>``…``<t9>``, ``<t.>`` (:data:`TIME_TOKENS`) added to the tokenizer (:func:`prepare_tokenizer`).
- **TimeMarker** (``time_separators``): a text separator ``second{12}`` before each frame token
  (:func:`separator_text`; :func:`d2lib.vlm.tokens.encode_example` lays them out).
- **TimeChat** (``time_embedding``): :class:`TimestampEmbedding` of the frame's second added to its token.

Whatever the format the model writes, :func:`d2lib.vlm.tokens.render_response` turns it back into
``"s - e"`` in seconds with :func:`to_seconds_text`, so what people read and the metrics parse never
changes (``d2lib.core.parsing`` / ``d2lib.evaluation.metrics`` stay as they are).

>>> format_span_as([3, 7], "relative", duration=10)
'from 30 to 69'
>>> to_seconds_text("The event happens in from 30 to 69.", "relative", duration=10)
'The event happens in 3 - 7.'
>>> format_span_as([12, 15.5], "time_tokens")
'<t1><t2><t.><t0> - <t1><t5><t.><t5>'
>>> to_seconds_text("in <t1> <t2> <t.> <t0> - <t1> <t5> <t.> <t5> .", "time_tokens")
'in 12 - 15.5 .'
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from d2lib.core.spans import format_span
from d2lib.vlm.tokens import TimeRep

TIME_FORMATS = ("seconds", "relative", "time_tokens", "frame_number")

# --------------------------------------------------------------------------------------------
# NumPro: frame numbers drawn onto the frames
# --------------------------------------------------------------------------------------------
_FONT_ROWS = {  # 3×5 pixel digits, one string per row ("#" = ink)
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
}
FONT = {d: np.array([[c == "#" for c in row] for row in rows]) for d, rows in _FONT_ROWS.items()}
RED = (255, 0, 0)
NUMPRO_LINE = "The red number at the bottom right of each frame is its frame number."


def digit_scale(height: int, width: int) -> int:
    """Pixels per font pixel for a frame of ``height × width``: the 5-pixel-high digits take about a
    sixth of a 32-pixel frame (scale 1) and grow with the frame (NumPro: font 40 on ~336 px).

    >>> digit_scale(32, 32), digit_scale(64, 48), digit_scale(336, 336)
    (1, 1, 10)
    """
    return max(1, min(height, width) // 32)


def number_mask(number: int, scale: int = 1) -> np.ndarray:
    """The ink of ``number`` in the pixel font: bool (5·scale, (4·digits − 1)·scale), 1-pixel gaps.

    >>> number_mask(7).astype(int)[:, :3].tolist()[0], number_mask(12).shape, number_mask(3, 2).shape
    ([1, 1, 1], (5, 7), (10, 6))
    """
    if number < 0:
        raise ValueError(f"frame numbers are >= 0, got {number}")
    digits = [FONT[d] for d in str(int(number))]
    gap = np.zeros((5, 1), dtype=bool)
    parts = [p for d in digits for p in (d, gap)][:-1]
    return np.kron(np.concatenate(parts, axis=1), np.ones((scale, scale), dtype=bool)).astype(bool)


def number_box(number: int, height: int, width: int) -> tuple[slice, slice, np.ndarray]:
    """Where :func:`draw_frame_numbers` puts ``number`` in a frame: (rows, cols, mask), bottom-right
    with a margin of one font pixel."""
    s = digit_scale(height, width)
    m = number_mask(number, s)
    h, w = m.shape
    if h + s > height or w + s > width:
        raise ValueError(f"frame number {number} does not fit a {height}×{width} frame")
    return slice(height - s - h, height - s), slice(width - s - w, width - s), m


def draw_frame_numbers(frames, numbers: Sequence[int] | None = None, colour=RED):
    """NumPro (lesson ``08_peers``): a copy of ``frames`` (T, H, W, 3) — uint8 numpy or torch, or float
    in [0, 1] — with each frame's number drawn in red at the bottom right (``numbers`` default
    0..T−1: frame t = second t at 1 fps). Same type and dtype as ``frames``.

    >>> f = draw_frame_numbers(np.zeros((12, 32, 32, 3), np.uint8))
    >>> f.dtype, f.shape, read_frame_number(f[11])
    (dtype('uint8'), (12, 32, 32, 3), 11)
    """
    T, H, W = frames.shape[:3]
    numbers = range(T) if numbers is None else list(numbers)
    if len(numbers) != T:
        raise ValueError(f"{len(numbers)} numbers for {T} frames")
    is_torch = isinstance(frames, torch.Tensor)
    out = frames.clone() if is_torch else np.array(frames, copy=True)
    floating = out.is_floating_point() if is_torch else np.issubdtype(out.dtype, np.floating)
    ink = [c / 255.0 for c in colour] if floating else list(colour)
    for t, n in enumerate(numbers):
        rows, cols, m = number_box(int(n), H, W)
        mask = torch.from_numpy(m).to(out.device) if is_torch else m
        patch = out[t, rows, cols]
        patch[mask] = torch.tensor(ink, dtype=out.dtype, device=out.device) if is_torch else np.asarray(ink, out.dtype)
        out[t, rows, cols] = patch
    return out


def red_ink(frame) -> np.ndarray:
    """(H, W) bool: pixels close to the drawing colour (R high, G and B low)."""
    f = np.asarray(frame.cpu() if isinstance(frame, torch.Tensor) else frame, dtype=np.float32)
    if f.max() <= 1.0:
        f = f * 255.0
    return (f[..., 0] > 180) & (f[..., 1] < 80) & (f[..., 2] < 80)


def read_frame_number(frame, max_number: int = 999) -> int | None:
    """Read a number drawn by :func:`draw_frame_numbers` back by template matching: the candidate
    0..``max_number`` whose ink best matches (IoU) the red pixels in its bottom-right box. ``None``
    when nothing red is there. Used to check the digits stay readable at the Shapes frame size."""
    H, W = int(frame.shape[0]), int(frame.shape[1])
    s = digit_scale(H, W)
    region = np.zeros((H, W), dtype=bool)  # the box of the widest candidate: every candidate is compared there
    width = (4 * len(str(max_number)) - 1) * s
    region[max(0, H - 6 * s):, max(0, W - s - width):] = True
    seen = red_ink(frame) & region
    if not seen.any():
        return None
    best, best_iou = None, 0.0
    for n in range(max_number + 1):
        try:
            rows, cols, m = number_box(n, H, W)
        except ValueError:
            break
        full = np.zeros_like(seen)
        full[rows, cols] = m
        iou = (seen & full).sum() / max((seen | full).sum(), 1)
        if iou > best_iou:
            best, best_iou = n, iou
    return best if best_iou > 0.5 else None


def prompt_question(question: str, variant) -> str:
    """The question a variant's prompt asks: NumPro prefixes one line saying the numbers are drawn.

    >>> from types import SimpleNamespace as V
    >>> prompt_question("When?", V(frame_numbers=True))
    'The red number at the bottom right of each frame is its frame number. When?'
    """
    return f"{NUMPRO_LINE} {question}" if getattr(variant, "frame_numbers", False) else question


# --------------------------------------------------------------------------------------------
# Time as text: relative 00–99 (VTimeLLM), time tokens (VTG-LLM), frame numbers (NumPro)
# --------------------------------------------------------------------------------------------
REL_MAX = 99  # relative indices 00..99: index = round(99 · t / duration)
TIME_TOKENS = [f"<t{c}>" for c in "0123456789"] + ["<t.>"]


def to_relative(span: Sequence[float], duration: float) -> tuple[int, int]:
    """VTimeLLM: seconds → two relative indices in 0..99 (0 = start of the video, 99 = its end).

    >>> to_relative([0, 30], 30), to_relative([3, 7], 10)
    ((0, 99), (30, 69))
    """
    if not duration or duration <= 0:
        raise ValueError(f"relative times need a duration > 0, got {duration}")
    idx = [int(min(REL_MAX, max(0, round(REL_MAX * float(t) / duration)))) for t in span]
    return idx[0], idx[1]


def from_relative(idx_pair: Sequence[int], duration: float) -> list[float]:
    """Relative indices → seconds (rounded to 0.1 s): the inverse of :func:`to_relative`.

    >>> from_relative((30, 69), 10), from_relative((0, 99), 30)
    ([3.0, 7.0], [0.0, 30.0])
    """
    return [round(float(i) / REL_MAX * duration, 1) for i in idx_pair]


def to_time_tokens(seconds: float) -> str:
    """VTG-LLM: a time spelt with time tokens, one decimal: 12 → ``<t1><t2><t.><t0>``."""
    s = f"{round(float(seconds), 1):.1f}"
    return "".join("<t.>" if c == "." else f"<t{c}>" for c in s)


_TT_RUN = re.compile(r"(?:<t[0-9.]>\s*)*<t[0-9.]>")


def from_time_tokens(text: str) -> float:
    """The number spelt by a run of time tokens (whitespace between them allowed).

    >>> from_time_tokens("<t1> <t2><t.><t5>")
    12.5
    """
    return float("".join(re.findall(r"<t([0-9.])>", text)))


def format_time(value: float, time_format: str = "seconds", duration: float | None = None,
                fps: float = 1.0) -> str:
    """One time (seconds) written in ``time_format`` (see the module docstring).

    >>> [format_time(7, f, duration=10) for f in TIME_FORMATS]
    ['7', '69', '<t7><t.><t0>', '7']
    """
    if time_format == "seconds":
        return format_span([value, value]).split(" - ")[0]
    if time_format == "relative":
        return f"{to_relative([value, value], duration)[0]:02d}"
    if time_format == "time_tokens":
        return to_time_tokens(value)
    if time_format == "frame_number":
        return str(int(round(float(value) * fps)))
    raise ValueError(f"time_format must be one of {TIME_FORMATS}, got {time_format!r}")


def format_span_as(span: Sequence[float], time_format: str = "seconds", duration: float | None = None,
                   fps: float = 1.0) -> str:
    """A span (seconds) as written in a response: ``"s - e"`` (seconds, time tokens) or
    ``"from x to y"`` (relative indices, frame numbers).

    >>> format_span_as([3, 7], "frame_number"), format_span_as([3, 7.5])
    ('from 3 to 7', '3 - 7.5')
    """
    if time_format == "seconds":
        return format_span(span)
    a, b = (format_time(v, time_format, duration, fps) for v in span)
    return f"from {a} to {b}" if time_format in ("relative", "frame_number") else f"{a} - {b}"


_FROM_TO = re.compile(r"\bfrom\s+(\d+)\s+to\s+(\d+)\b")


def to_seconds_text(text: str, time_format: str = "seconds", duration: float | None = None,
                    fps: float = 1.0) -> str:
    """The parse-back of :func:`format_span_as`: every time written in ``time_format`` replaced by
    seconds (``"from x to y"`` → ``"s - e"``; a run of time tokens → its number).

    >>> to_seconds_text("happens in from 3 to 7.", "frame_number", fps=2.0)
    'happens in 1.5 - 3.5.'
    """
    if time_format == "seconds" or not text:
        return text
    if time_format == "time_tokens":
        return _TT_RUN.sub(lambda m: format_time(from_time_tokens(m.group(0))), text)
    if time_format == "relative":
        if not duration:
            raise ValueError("relative times need the video duration to be read back")
        conv = lambda a, b: from_relative((int(a), int(b)), duration)  # noqa: E731
    elif time_format == "frame_number":
        conv = lambda a, b: [int(a) / fps, int(b) / fps]  # noqa: E731
    else:
        raise ValueError(f"time_format must be one of {TIME_FORMATS}, got {time_format!r}")
    return _FROM_TO.sub(lambda m: format_span(conv(m.group(1), m.group(2))), text)


# --------------------------------------------------------------------------------------------
# TimeMarker: a text separator before each frame token
# --------------------------------------------------------------------------------------------
def separator_text(second: float) -> str:
    """TimeMarker's separator carrying the second of the frame token that follows it.

    >>> separator_text(12), separator_text(2.5)
    ('second{12}', 'second{2.5}')
    """
    return "second{" + format_time(second) + "}"


# --------------------------------------------------------------------------------------------
# Tokenizer: the words and tokens a variant's texts need
# --------------------------------------------------------------------------------------------
def required_texts(variant) -> list[str]:
    """Texts a variant writes beyond the base vocabulary: NumPro's prompt line, "from x to y",
    relative indices 00–99 and TimeMarker's separator words."""
    fmt = getattr(variant, "time_format", "seconds")
    out = []
    if getattr(variant, "frame_numbers", False):
        out.append(NUMPRO_LINE)
    if fmt in ("relative", "frame_number"):
        out.append("from to")
    if fmt == "relative":
        out.append(" ".join(f"{i:02d}" for i in range(REL_MAX + 1)))
    if getattr(variant, "time_separators", False):
        out.append("second { }")
    return out


def prepare_tokenizer(tokenizer, variant) -> list[int]:
    """Add what ``variant`` writes to ``tokenizer`` in place: VTG-LLM's :data:`TIME_TOKENS` as special
    tokens, and every word of :func:`required_texts` the tokenizer can only spell as unknown (the
    tiny word-level tokenizer; a BPE tokenizer needs none). Returns the new ids — pass them to
    :func:`d2lib.vlm.tokens.mean_init_rows` so the LM's embedding rows exist and start at the mean."""
    from tokenizers import AddedToken

    before = len(tokenizer)
    if getattr(variant, "time_format", "seconds") == "time_tokens":
        missing = [t for t in TIME_TOKENS if t not in tokenizer.get_vocab()]
        if missing:  # as d2lib.vlm.tokens.add_special_tokens adds <evi> & co.
            tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    unk = tokenizer.unk_token_id
    words = dict.fromkeys(w for text in required_texts(variant) for w in re.findall(r"\w+|[^\w\s]", text))
    new = [w for w in words if unk is not None and unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
    if new:
        tokenizer.add_tokens([AddedToken(w, single_word=bool(re.match(r"\w", w)), normalized=False) for w in new])
    return list(range(before, len(tokenizer)))


# --------------------------------------------------------------------------------------------
# TimeChat: a timestamp embedding added to each frame token
# --------------------------------------------------------------------------------------------
def sinusoid(seconds: torch.Tensor, dim: int, period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sin/cos features of ``seconds`` (...,) → (..., dim)."""
    half = dim // 2
    freq = torch.exp(-math.log(period) * torch.arange(half, device=seconds.device, dtype=torch.float32) / max(half, 1))
    ang = seconds.float()[..., None] * freq
    out = torch.cat([ang.sin(), ang.cos()], -1)
    return torch.nn.functional.pad(out, (0, dim - 2 * half))


class TimestampEmbedding(nn.Module):
    """TimeChat (lesson ``08_peers``): the frame's second as a vector added to its frame token —
    fixed sinusoidal features of the second through a learned linear map (init std 0.02, so the
    tokens change from the start and the map learns what time should mean).

    ``forward(tokens (B, T, H), seconds (B, T) or (T,)) → (B, T, H)``.
    """

    def __init__(self, dim: int, init_std: float = 0.02):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, dim, bias=False)
        nn.init.normal_(self.proj.weight, std=init_std)

    def forward(self, tokens: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
        emb = self.proj(sinusoid(seconds.to(tokens.device), self.dim).to(self.proj.weight.dtype))
        return tokens + emb.to(tokens.dtype)


# --------------------------------------------------------------------------------------------
# The variant's time switches behind the core's hooks
# --------------------------------------------------------------------------------------------
class PeerTimes(TimeRep):
    """A variant's time switches as a :class:`d2lib.vlm.tokens.TimeRep`: ``time_format`` writes and reads
    the text times, ``frame_numbers`` draws the numbers and adds NumPro's prompt line,
    ``time_separators`` puts ``second{t}`` before each frame token, ``time_embedding`` gives the model
    a :class:`TimestampEmbedding` (``time_embed``). With every switch off it writes seconds, as the core.

    >>> from types import SimpleNamespace as V
    >>> t = PeerTimes(V(time_format="frame_number", frame_numbers=True))
    >>> t.format_span([3, 7]), t.read_times("in from 3 to 7.", fps=1.0), t.question("When?")[:7]
    ('from 3 to 7', 'in 3 - 7.', 'The red')
    """

    def __init__(self, variant):
        self.variant = variant
        self.time_format = getattr(variant, "time_format", "seconds")
        self.frame_numbers = bool(getattr(variant, "frame_numbers", False))
        self.reads_pixels = self.frame_numbers
        self.separators = bool(getattr(variant, "time_separators", False))
        self.module_name = "time_embed" if getattr(variant, "time_embedding", False) else None

    def prepare_tokenizer(self, tokenizer) -> list[int]:
        return prepare_tokenizer(tokenizer, self.variant)

    def format_span(self, span, duration=None, fps=1.0) -> str:
        return format_span_as(span, self.time_format, duration, fps)

    def read_times(self, text, duration=None, fps=1.0) -> str:
        return to_seconds_text(text, self.time_format, duration, fps)

    def question(self, question: str) -> str:
        return f"{NUMPRO_LINE} {question}" if self.frame_numbers else question

    def separator(self, second: float) -> str:
        return separator_text(second)

    def draw_frames(self, frames):
        """NumPro: frames (B, T, H, W, 3) with frame t numbered t (at 1 fps, second t)."""
        if not self.frame_numbers:
            return frames
        B, T = frames.shape[:2]
        return draw_frame_numbers(frames.flatten(0, 1), list(range(T)) * B).unflatten(0, (B, T))

    def module(self, dim: int, current=None):
        if self.module_name is None:
            return None
        return current if isinstance(current, TimestampEmbedding) else TimestampEmbedding(dim)


__all__ = ["TIME_FORMATS", "TIME_TOKENS", "NUMPRO_LINE", "FONT", "digit_scale", "number_mask", "number_box",
           "draw_frame_numbers", "read_frame_number", "red_ink", "prompt_question", "to_relative", "from_relative",
           "to_time_tokens", "from_time_tokens", "format_time", "format_span_as", "to_seconds_text",
           "separator_text", "required_texts", "prepare_tokenizer", "sinusoid", "TimestampEmbedding", "PeerTimes"]
