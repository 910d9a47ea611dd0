"""Tokenizer, special tokens, prompt/response templates and example encoding.

Taught in lesson ``02_model``. The response layouts follow docs/CONTRACTS.md; which layout a
model sees is decided by its variant's switches (:class:`d2lib.vlm.model.Variant`):

- ``prefix``: the pure-grounding stage ``<evi>×K </evi>`` before the answer;
- ``answer_evidence``: the answer refers to each event with ``<evi>`` or with "s - e" text, or
  not at all (``"none"``: the grounding-free captioning/QA mode of stage ``align``; only dvc, rar
  and gvq have such an answer — see :data:`NO_EVIDENCE_TASKS`);
- ``head``: ``frame`` writes every event as a start and an end token (``<evi> - <evi>``),
  ``none`` has no ``<evi>`` at all.

How times are written and how many ``<video>`` slots a video gets are the variant's two mechanisms,
:class:`TimeRep` and :class:`TokenBudget` (:func:`time_rep` / :func:`token_budget` resolve them; the
D²VLM defaults live here, the peers' plug in from ``d2lib.peers`` — lesson ``08_peers``).

>>> from types import SimpleNamespace as V
>>> full = V(prefix=True, answer_evidence="evi", head="span")
>>> rec = {"task": "tvg", "tgt": [3, 7], "q": "When?"}
>>> build_response(rec, full).text
'<evi></evi>The event happens in <evi>.'
>>> build_response(rec, V(prefix=False, answer_evidence="text", head="none")).text
'The event happens in 3 - 7.'
>>> render_response('<evi></evi>The event happens in <evi>.', [[3, 7], [3, 7]])
'3 - 7 </evi> The event happens in 3 - 7.'
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from d2lib.core.spans import format_span, span_to_frames

# --- special tokens -------------------------------------------------------------------------
VIDEO = "<video>"
EVI = "<evi>"
EVI_END = "</evi>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
PAD, UNK = "<pad>", "<unk>"
EXTRA_SPECIALS = [VIDEO, EVI, EVI_END, SYSTEM, USER, ASSISTANT, END]
SYSTEM_PROMPT = "You are a helpful AI assistant."
LETTERS = "ABCDEFGH"

ROLE_SPAN, ROLE_START, ROLE_END = 0, 1, 2  # what one <evi> stands for
STAGE_PREFIX, STAGE_ANSWER = 0, 1  # grounding stage / answer stage
IGNORE_INDEX = -100


# --- the variant's mechanisms: where the peers plug in ---------------------------------------
class Mechanism:
    """What a variant's mechanism may add to the model: a module the model holds under
    ``module_name`` (``None``: nothing). ``module(dim, current)`` returns it for LM width ``dim``:
    ``current`` (the model's module of that name, or ``None``) when it still fits, else a new one —
    built only when switched on, so a D²VLM row draws no random numbers for it."""

    module_name: str | None = None

    def module(self, dim: int, current=None):
        return None


class TimeRep(Mechanism):
    """How a variant tells the model *when* — D²VLM's way: times written as seconds (``"3 - 7.5"``),
    nothing added to the prompt, the frames or the frame tokens. The hook points (a peer's time
    representation, :mod:`d2lib.peers.timerep`, overrides those it changes):

    - ``format_span(span, duration, fps) -> str``: a span (seconds) as a response writes it;
    - ``read_times(text, duration, fps) -> str``: ``text`` with the times it writes read back to
      ``"s - e"`` seconds (what people read and the metrics parse);
    - ``question(q) -> str``: the question as the prompt asks it;
    - ``separators`` / ``separator(second) -> str``: text put before each frame token;
    - ``draw_frames(frames (B, T, H, W, 3)) -> (B, T, H, W, 3)``: the frames as the tower sees them;
    - ``module_name`` / ``module(dim, current)`` (:class:`Mechanism`): a per-frame embedding, called
      as ``module(tokens (B, T, H), seconds (T,)) -> (B, T, H)`` on the frame tokens.

    >>> SECONDS.format_span([3, 7.5]), SECONDS.read_times("in 3 - 7.5."), SECONDS.question("When?")
    ('3 - 7.5', 'in 3 - 7.5.', 'When?')
    """

    separators = False

    def format_span(self, span: Sequence[float], duration: float | None = None, fps: float = 1.0) -> str:
        return format_span(span)

    def read_times(self, text: str, duration: float | None = None, fps: float = 1.0) -> str:
        return text

    def question(self, question: str) -> str:
        return question

    def separator(self, second: float) -> str:
        return ""

    reads_pixels = False  # True when the frames themselves change (NumPro): no cached tower features

    def prepare_tokenizer(self, tokenizer) -> list[int]:
        """Add the words this time representation writes to ``tokenizer`` in place; the new ids (for
        :func:`mean_init_rows`). D²VLM's seconds need none."""
        return []

    def draw_frames(self, frames):
        return frames


class TokenBudget(Mechanism):
    """How many frame tokens of a video reach the LM — D²VLM's way: one per second, back to back from
    ``frame_start`` (``plain``). The hook points (a peer's budget, :mod:`d2lib.peers.tokenbudget`,
    overrides those it changes; heads, targets and decoding stay per second either way):

    - ``plain``: one ``<video>`` slot per second; otherwise examples carry ``frame_pos`` and
      ``token_of_frame`` (:func:`encode_example`);
    - ``token_map(n_frames, keep) -> (T,) long | None``: the slot covering each second (``None``: the
      model decides, from the frame tokens); ``n_tokens(n_frames, keep) -> int``: the slots;
    - ``keep_masks(videos) -> {video: (T,) bool} | None``: per-video inputs of ``token_map`` that the
      data path computes from the pixels (``keep``);
    - ``slot_tokens(frame_tok (B, T, H), frame_mask (B, T), n_slots, token_of_frame (B, T), module)
      -> (tokens (B, K, H), token_of_frame (B, T))``: the tokens the LM reads in the K slots
      (here: each slot holds the token of the first second it covers);
    - ``module_name`` / ``module(dim, current)`` (:class:`Mechanism`): the ``module`` given to
      ``slot_tokens``.

    >>> PLAIN.token_map(4).tolist(), PLAIN.n_tokens(4), PLAIN.keep_masks({"v": None})
    ([0, 1, 2, 3], 4, None)
    """

    plain = True

    def token_map(self, n_frames: int, keep=None) -> torch.Tensor | None:
        return torch.arange(n_frames)

    def n_tokens(self, n_frames: int, keep=None) -> int:
        return n_frames

    reads_pixels = False  # True when the layout is computed from the pixels (DiffFP): no cached features

    def keep_masks(self, videos: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        return None

    def slot_tokens(self, frame_tok: torch.Tensor, frame_mask: torch.Tensor, n_slots: int,
                    token_of_frame: torch.Tensor | None = None, module=None) -> tuple[torch.Tensor, torch.Tensor]:
        if token_of_frame is None:
            raise ValueError("this layout needs token_of_frame (from d2lib.vlm.tokens.collate)")
        B, T, H = frame_tok.shape
        tof = token_of_frame
        t = torch.arange(T, device=tof.device)[None].expand(B, -1)
        first = torch.full((B, n_slots), T - 1, dtype=torch.long, device=tof.device)
        first = first.scatter_reduce(1, tof.masked_fill(~frame_mask, 0), t.masked_fill(~frame_mask, T - 1),
                                     reduce="amin")
        return frame_tok.gather(1, first[..., None].expand(-1, -1, H)), tof


SECONDS, PLAIN = TimeRep(), TokenBudget()  # D²VLM's own: what every switch at its default resolves to

# A variant's switches of each kind with their D²VLM defaults, and the peers' factory ("module:name",
# ``factory(variant) -> mechanism``) a variant resolves to when it switches one on (lesson ``08_peers``).
TIME_SWITCHES = {"time_format": "seconds", "frame_numbers": False, "time_separators": False,
                 "time_embedding": False}
BUDGET_SWITCHES = {"frame_select": "all", "merge_budget": 0, "stc_stride": 1}
TIME_PLUGIN = "d2lib.peers.timerep:PeerTimes"
BUDGET_PLUGIN = "d2lib.peers.tokenbudget:for_variant"


def _resolve(variant, switches: Mapping, default: Mechanism, plugin: str):
    if all(getattr(variant, k, d) == d for k, d in switches.items()):
        return default
    module, name = plugin.split(":")
    return getattr(importlib.import_module(module), name)(variant)


def time_rep(variant) -> TimeRep:
    """The variant's :class:`TimeRep`: :data:`SECONDS` when its :data:`TIME_SWITCHES` are at their
    defaults (every D²VLM row; nothing of :mod:`d2lib.peers` is imported), else
    :data:`TIME_PLUGIN` called on the variant.

    >>> from types import SimpleNamespace as V
    >>> time_rep(V(prefix=True)) is SECONDS
    True
    """
    return _resolve(variant, TIME_SWITCHES, SECONDS, TIME_PLUGIN)


def token_budget(variant) -> TokenBudget:
    """The variant's :class:`TokenBudget`: :data:`PLAIN` when its :data:`BUDGET_SWITCHES` are at their
    defaults, else :data:`BUDGET_PLUGIN` called on the variant."""
    return _resolve(variant, BUDGET_SWITCHES, PLAIN, BUDGET_PLUGIN)


def reads_pixels(variant) -> bool:
    """True when ``variant``'s mechanisms need the uint8 frames, not a tower-feature cache computed
    from other pixels (NumPro draws on the frames; DiffFP's layout comes from them).

    >>> from types import SimpleNamespace as V
    >>> reads_pixels(V(prefix=True))
    False
    """
    return time_rep(variant).reads_pixels or token_budget(variant).reads_pixels


# --- tokenizers -----------------------------------------------------------------------------
def train_word_tokenizer(texts: Iterable[str], max_seconds: int = 64):
    """Tiny preset: a word-level tokenizer trained on ``texts`` plus the numbers 0..max_seconds,
    digits, punctuation and our own templates. Returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, *EXTRA_SPECIALS], min_frequency=1)
    fixed = [SYSTEM_PROMPT, *TEMPLATE_WORDS, " ".join(str(i) for i in range(max_seconds + 1)),
             " ".join(f"({c})" for c in LETTERS), ". , ; : ? ! ' \" - ( ) [ ] / %"]
    tok.train_from_iterator([*fixed, *texts], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD,
                                   extra_special_tokens=list(EXTRA_SPECIALS))


def record_texts(records: Iterable[dict]) -> Iterable[str]:
    """Every text of E.T. Bench records (q, g, o) — the corpus for :func:`train_word_tokenizer`."""
    for r in records:
        yield str(r.get("q", ""))
        for key in ("g", "o"):
            for s in r.get(key) or []:
                yield str(s)


def add_special_tokens(tokenizer) -> list[int]:
    """Real preset: add our special tokens the LM's tokenizer lacks (and a pad token if none).
    Returns the ids of the tokens that were added."""
    missing = [t for t in EXTRA_SPECIALS if t not in tokenizer.get_vocab()]
    before = len(tokenizer)
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return list(range(before, len(tokenizer)))


def make_tokenizer(cfg, texts: Iterable[str] = (), max_seconds: int = 64):
    """The tokenizer of a :class:`d2lib.vlm.model.ModelConfig` and the ids it added to the LM's vocabulary.

    tiny: a word-level tokenizer trained on ``texts`` (e.g. ``[" ".join(synth.vocabulary())]``), no
    new ids (the tiny LM is built for it). phi3-mini: the LM's own tokenizer from ``cfg.lm_path`` plus
    our special tokens; pass the returned ids to ``D2VLM.build`` so their rows are mean-initialised.
    """
    if cfg.preset == "tiny":
        return train_word_tokenizer(texts, max_seconds), []
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.lm_path)
    return tok, add_special_tokens(tok)


def load_tokenizer(path: str | Path):
    """A tokenizer saved with ``save_pretrained`` (tiny or real); checks our special tokens exist."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    vocab = tok.get_vocab()
    missing = [t for t in EXTRA_SPECIALS if t not in vocab]
    if missing or tok.pad_token is None:
        raise ValueError(f"tokenizer at {path} lacks special tokens {missing or ['pad']}")
    return tok


def special_ids(tokenizer) -> dict[str, int]:
    """Ids the model needs: video placeholder, <evi>, </evi>, end-of-turn and pad."""
    conv = tokenizer.convert_tokens_to_ids
    return {"video": conv(VIDEO), "evi": conv(EVI), "evi_end": conv(EVI_END), "end": conv(END),
            "pad": tokenizer.pad_token_id, "system": conv(SYSTEM), "user": conv(USER),
            "assistant": conv(ASSISTANT)}


@torch.no_grad()
def mean_init_rows(lm, new_ids: Sequence[int]) -> None:
    """Resize ``lm`` to hold ``new_ids`` and set their input/output embedding rows to the mean of
    the rows below ``min(new_ids)`` (the pretrained vocabulary: added tokens get the last ids).
    Phi-3 already has spare rows past its vocabulary; we mean-init those too."""
    if not new_ids:
        return
    n_old, need = min(new_ids), max(new_ids) + 1
    if lm.get_input_embeddings().weight.shape[0] < need:
        lm.resize_token_embeddings(need, mean_resizing=False)
    ids = torch.as_tensor(list(new_ids))
    for emb in (lm.get_input_embeddings(), lm.get_output_embeddings()):
        if emb is not None:
            emb.weight[ids] = emb.weight[:n_old].mean(0, keepdim=True)


# --- responses ------------------------------------------------------------------------------
TEMPLATE_WORDS = ["The event happens in", "The evidence is in", "The action happens in"]
NO_EVIDENCE_TASKS = ("dvc", "rar", "gvq")  # tasks with an answer that cites no time (answer_evidence "none")


@dataclass
class Response:
    """A response string with the bookkeeping of each ``<evi>`` in it (in order)."""

    text: str
    spans: list[list[float]] = field(default_factory=list)  # GT span (seconds) per <evi>
    events: list[int] = field(default_factory=list)  # index of the event in record_spans(record)
    stages: list[int] = field(default_factory=list)  # STAGE_PREFIX or STAGE_ANSWER
    roles: list[int] = field(default_factory=list)  # ROLE_SPAN, or ROLE_START/ROLE_END (frame head)


def record_spans(record: dict) -> list[list[float]]:
    """GT spans of a record as a list of ``[s, e]`` (tvg/gvq: one; tal/dvc: many; rar: none).

    >>> record_spans({"tgt": [2, 5]}), record_spans({"tgt": [[1, 2], [4, 6]]}), record_spans({})
    ([[2.0, 5.0]], [[1.0, 2.0], [4.0, 6.0]], [])
    """
    tgt = record.get("tgt")
    if not tgt:
        return []
    if all(isinstance(v, (int, float)) for v in tgt):  # flat [s, e] or [s1, e1, s2, e2, ...]
        if len(tgt) % 2:
            raise ValueError(f"record {record.get('idx')}: odd-length flat tgt {tgt}")
        return [[float(tgt[i]), float(tgt[i + 1])] for i in range(0, len(tgt), 2)]
    return [[float(s), float(e)] for s, e in tgt]


class _Builder:
    """Accumulates response text and one bookkeeping entry per emitted ``<evi>``."""

    def __init__(self, variant, duration=None, fps: float = 1.0):
        self.v, self.parts, self.r = variant, [], Response("")
        self.duration, self.fps, self.times = duration, fps, time_rep(variant)

    def text(self, s: str) -> None:
        self.parts.append(s)

    def event(self, k: int, span, stage: int, as_text: bool) -> None:
        if as_text:  # "s - e", or as the variant's time representation writes it (TimeRep.format_span)
            self.parts.append(self.times.format_span(span, self.duration, self.fps))
            return
        roles = [ROLE_START, ROLE_END] if self.v.head == "frame" else [ROLE_SPAN]
        self.parts.append(f"{EVI} - {EVI}" if self.v.head == "frame" else EVI)
        for role in roles:
            self.r.spans.append(list(span))
            self.r.events.append(k)
            self.r.stages.append(stage)
            self.r.roles.append(role)

    def done(self) -> Response:
        self.r.text = "".join(self.parts)
        return self.r


def _clean(s: str) -> str:
    return str(s).strip().rstrip(".").strip()


def _option(record: dict) -> str:
    p = int(record["p"])
    return f"({LETTERS[p]}) {_clean(record['o'][p])}."


def build_response(record: dict, variant, duration: float | None = None, fps: float = 1.0) -> Response:
    """The target response of ``record`` in ``variant``'s layout (see module docstring). Text times
    are written by the variant's :class:`TimeRep` (:func:`time_rep`; a peer's relative times need
    ``duration``, default the record's)."""
    spans, task = record_spans(record), record["task"]
    duration = duration if duration is not None else record.get("duration")
    text_answer = variant.answer_evidence == "text" or variant.head == "none"
    no_evidence = variant.answer_evidence == "none"
    if no_evidence and task not in NO_EVIDENCE_TASKS:
        raise ValueError(f"task {task!r} has no answer without evidence (answer_evidence 'none' "
                         f"supports {', '.join(NO_EVIDENCE_TASKS)})")
    b = _Builder(variant, duration, fps)
    if variant.prefix:
        if variant.head == "none":
            raise ValueError("a grounding prefix needs a grounding head (variant.head != 'none')")
        for k, sp in enumerate(spans):
            b.event(k, sp, STAGE_PREFIX, as_text=False)
        b.text(EVI_END)

    def ev(k: int) -> None:
        b.event(k, spans[k], STAGE_ANSWER, as_text=text_answer)

    if task == "tvg":
        b.text("The event happens in "), ev(0), b.text(".")
    elif task == "gvq" and no_evidence:
        b.text(_option(record))
    elif task == "gvq":
        b.text(_option(record) + " The evidence is in "), ev(0), b.text(".")
    elif task == "rar":
        b.text(_option(record))
    elif task == "dvc":
        caps = record.get("g") or []
        if len(caps) != len(spans):
            raise ValueError(f"record {record.get('idx')}: dvc needs one caption per span")
        for k, cap in enumerate(caps):
            if no_evidence:  # the captions in temporal order
                b.text((" " if k else "") + f"{_clean(cap)}.")
            else:
                b.text(" " if k else ""), ev(k), b.text(f", {_clean(cap)}.")
    elif task == "tal":  # the prompt's format: '<start> - <end>, <start> - <end>'
        for k in range(len(spans)):
            b.text(", " if k else ""), ev(k)
    else:
        raise ValueError(f"no response template for task {task!r}")
    return b.done()


# --- rendering ------------------------------------------------------------------------------
def _tidy(s: str) -> str:
    """Whitespace/punctuation clean-up after word-level decoding ("happens in 3 - 7 ." → "...7.")."""
    s = re.sub(r"(\d) \. (\d)", r"\1.\2", s)
    s = re.sub(r"\s+([.,;:?!)\]])", r"\1", s)
    s = re.sub(r"([(\[])\s+", r"\1", s)
    s = s.replace(EVI_END, f" {EVI_END} ")
    return re.sub(r"\s+", " ", s).strip()


def _value_text(v) -> str:
    if isinstance(v, (int, float)):
        return format_span([v, v]).split(" - ")[0]
    return format_span(v)


def render_response(token_ids_or_text, spans: Sequence, tokenizer=None, times: TimeRep | None = None,
                    duration: float | None = None, fps: float = 1.0) -> str:
    """Text shown to people (and parsed by the metrics): each ``<evi>`` replaced, in order, by its
    span as "s - e" (a frame-level token's value is a single number). Chat/pad tokens dropped.

    ``token_ids_or_text``: a string, or ids decoded with ``tokenizer``. ``spans``: per ``<evi>``
    a ``[s, e]`` or a number. Extra ``<evi>`` without a span stay as they are. Times the model
    wrote as text are read back to "s - e" seconds by ``times`` (the variant's :class:`TimeRep`,
    :meth:`TimeRep.read_times`; a peer's relative times need the video's ``duration``).

    >>> render_response("<evi></evi>In <evi>.", [[3, 7], [3, 7]], times=SECONDS)
    '3 - 7 </evi> In 3 - 7.'
    """
    if isinstance(token_ids_or_text, str):
        text = token_ids_or_text
    else:
        ids = [int(i) for i in token_ids_or_text]
        text = tokenizer.decode(ids, skip_special_tokens=False)
    for t in (END, PAD, tokenizer.pad_token if tokenizer is not None else PAD):
        if t:
            text = text.replace(t, " ")
    pieces = text.split(EVI)
    out = [pieces[0]]
    for i, piece in enumerate(pieces[1:]):
        out.append(f" {_value_text(spans[i])} " if i < len(spans) else EVI)
        out.append(piece)
    text = _tidy("".join(out))
    if times is not None:  # times written as seconds come back unchanged (and _tidy is idempotent)
        back = times.read_times(text, duration, fps)
        text = text if back == text else _tidy(back)
    return text


# --- prompts and examples -------------------------------------------------------------------
# Sentences that only tell the model how to format its answer (the Shapes templates and E.T. Bench's);
# the "short" prompt drops them: the model learns the format from its targets.
FORMAT_INSTRUCTIONS = ("Answer in the format", "Answer with", "The format should be", "Please answer in",
                       "Your answer should")


def short_question(question: str) -> str:
    """``question`` without its answer-format instruction (everything from the first sentence that
    starts with one of :data:`FORMAT_INSTRUCTIONS`); the question itself and any options stay.

    >>> short_question("Find the moment in the video when the red circle grows. Answer in the format "
    ...                "'The event happens in <start> - <end>', with times in seconds.")
    'Find the moment in the video when the red circle grows.'
    >>> short_question("Which shape grows? Options: (A) a (B) b. Answer with the best option.")
    'Which shape grows? Options: (A) a (B) b.'
    >>> short_question("When?")
    'When?'
    """
    cut = min((i for i in (question.find(" " + p) for p in FORMAT_INSTRUCTIONS) if i >= 0), default=-1)
    return question[:cut].rstrip() if cut > 0 else question


def question_text(record_q: str, variant) -> str:
    """The question a variant's prompt asks: the record's ``q`` (``variant.prompt`` "full") or without
    its answer-format sentence ("short", :func:`short_question`), as the variant's :class:`TimeRep`
    asks it (:meth:`TimeRep.question`: a peer may add a line)."""
    q = short_question(record_q) if getattr(variant, "prompt", "full") == "short" else record_q
    return time_rep(variant).question(q)


def prompt_text(question: str) -> tuple[str, str]:
    """The chat prompt around the video placeholder: (before, after). The response follows."""
    before = f"{SYSTEM}\n{SYSTEM_PROMPT}{END}\n{USER}\n"
    after = f"\n{question}{END}\n{ASSISTANT}\n"
    return before, after


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_example(record: dict, n_frames: int, variant, tokenizer, with_response: bool = True,
                   fps: float = 1.0, keep=None) -> dict:
    """Token ids and grounding bookkeeping of one record for a video of ``n_frames`` frames.

    Layout: ``prompt-before · <video>×n_frames · prompt-after [· response · <|end|>]``.
    Returns a dict (tensors are 1-D unless noted):

    - ``input_ids`` (L,), ``labels`` (L,) = ids on the response (incl. final ``<|end|>``) else −100;
    - ``frame_start`` int, ``n_frames`` int — frame t sits at position ``frame_start + t``;
    - ``evi_tok_pos`` (K,) position of each ``<evi>`` in the response; ``evi_pred_pos`` (K,) the
      position whose hidden state predicts it (``evi_tok_pos − 1``; e_k is read there);
    - ``evi_spans`` (K, 2) GT seconds, ``evi_frames`` (K, 2) long inclusive GT frames;
    - ``evi_event`` (K,), ``evi_stage`` (K,), ``evi_role`` (K,) — pair grounding/answer copies by
      (event, role) for the consistency loss;
    - ``response`` the response text (empty without response), ``idx`` the record's idx.

    A layout other than one slot per second back to back (the variant's :class:`TokenBudget` is not
    ``plain``, or its :class:`TimeRep` puts ``separators`` before the slots) adds ``frame_pos`` (K,)
    the position of each of the K ``<video>`` slots and ``token_of_frame`` (n_frames,) the slot covering
    each second (absent when the model decides it: ``token_map`` is ``None``). ``keep``: the video's
    entry of the budget's ``keep_masks``, when it has them. The question and the text times follow
    the variant's :class:`TimeRep`.
    """
    before, after = prompt_text(question_text(record["q"], variant))
    video_id = tokenizer.convert_tokens_to_ids(VIDEO)
    ids = _ids(tokenizer, before)
    frame_start = len(ids)
    times = time_rep(variant)
    layout = _frame_layout(variant, n_frames, keep, fps)
    if layout is None:
        ids += [video_id] * n_frames
    else:
        tmap, seconds = layout
        frame_pos = []
        for sec in seconds:
            if times.separators:
                ids += _ids(tokenizer, times.separator(sec))
            frame_pos.append(len(ids))
            ids.append(video_id)
    ids += _ids(tokenizer, after)
    labels = [IGNORE_INDEX] * len(ids)
    resp = build_response(record, variant, duration=n_frames / fps, fps=fps) if with_response else Response("")
    if with_response:
        r_ids = _ids(tokenizer, resp.text) + [tokenizer.convert_tokens_to_ids(END)]
        resp_start = len(ids)
        ids, labels = ids + r_ids, labels + r_ids
        evi_id = tokenizer.convert_tokens_to_ids(EVI)
        evi_tok = [resp_start + i for i, t in enumerate(r_ids) if t == evi_id]
        if len(evi_tok) != len(resp.spans):
            raise ValueError(f"tokenizer split {EVI} unexpectedly in {resp.text!r}")
    else:
        evi_tok = []
    frames = [span_to_frames(sp, n_frames, fps) for sp in resp.spans]
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    extra = {}
    if layout is not None:
        extra["frame_pos"] = long(frame_pos)
        if layout[0] is not None:
            extra["token_of_frame"] = layout[0]
    return {
        "input_ids": long(ids), "labels": long(labels),
        "frame_start": frame_start, "n_frames": n_frames,
        "evi_tok_pos": long(evi_tok), "evi_pred_pos": long([p - 1 for p in evi_tok]),
        "evi_spans": torch.tensor(resp.spans, dtype=torch.float32).reshape(-1, 2),
        "evi_frames": long(frames).reshape(-1, 2),
        "evi_event": long(resp.events), "evi_stage": long(resp.stages), "evi_role": long(resp.roles),
        "response": resp.text, "idx": record.get("idx"), **extra,
    }


def encode_prompt(record: dict, n_frames: int, variant, tokenizer, keep=None) -> dict:
    """:func:`encode_example` without the response — the input to generation."""
    return encode_example(record, n_frames, variant, tokenizer, with_response=False, keep=keep)


def _frame_layout(variant, n_frames: int, keep, fps: float):
    """``None`` for the plain layout (one ``<video>`` slot per second, back to back); else
    (token_of_frame (T,) long or None when the model decides it, the second each slot starts at)."""
    budget = token_budget(variant)
    if budget.plain and not time_rep(variant).separators:
        return None
    tmap = budget.token_map(n_frames, keep)
    if tmap is None:  # e.g. merging: the slots exist, which seconds each covers is decided by the model
        return None, [t / fps for t in range(budget.n_tokens(n_frames))]
    first = {}
    for t, k in enumerate(tmap.tolist()):
        first.setdefault(k, t)
    return tmap, [first[k] / fps for k in sorted(first)]


class NotPackable(ValueError):
    """Examples that cannot share one packed sequence (their prompts differ before the question)."""


def shared_prefix_len(ex: dict) -> int:
    """Length of the part of an encoded example that every query of its video shares: the
    prompt up to and including the last ``<video>`` slot (the question comes after it)."""
    if "frame_pos" in ex:
        return int(ex["frame_pos"].max()) + 1 if len(ex["frame_pos"]) else int(ex["frame_start"])
    return int(ex["frame_start"]) + int(ex["n_frames"])


def pack_examples(examples: Sequence[dict]) -> dict:
    """Pack the encoded examples of one video (:func:`encode_example`) into one sequence.

    Layout: ``shared prefix (prompt + <video>×T) · segment 1 · segment 2 · …`` where segment i is
    example i after the shared prefix (its question, response and ``<|end|>``). With the block
    mask of :func:`d2lib.vlm.model.attention_mask_4d` (each segment sees the prefix and itself) and
    positions that restart at the prefix length in every segment, every segment is computed
    exactly as its example alone — frames once, Q queries per pass.

    Adds ``segment_ids`` (L,) (0: shared prefix, i: segment i) and ``position_ids`` (L,) to the
    keys of :func:`encode_example`; ``evi_*`` of all segments concatenated (positions shifted),
    ``evi_pairs`` (M, 2) the consistency pairs inside each segment, ``idx`` the list of the
    examples' idx, ``n_queries`` Q. Raises :class:`NotPackable` when the prefixes differ.

    >>> import torch
    >>> def ex(q):  # prefix [9, 7, 7] (frame_start 1, 2 frames), then a question and a response
    ...     ids = torch.tensor([9, 7, 7, *q])
    ...     lab = torch.tensor([-100, -100, -100, -100, *q[1:]])
    ...     e = torch.zeros(0, dtype=torch.long)
    ...     return {"input_ids": ids, "labels": lab, "frame_start": 1, "n_frames": 2, "evi_tok_pos": e,
    ...             "evi_pred_pos": e, "evi_spans": torch.zeros(0, 2), "evi_frames": e.reshape(0, 2),
    ...             "evi_event": e, "evi_stage": e, "evi_role": e, "response": "", "idx": q[0]}
    >>> p = pack_examples([ex([1, 2]), ex([3, 4, 5])])
    >>> p["input_ids"].tolist(), p["segment_ids"].tolist(), p["position_ids"].tolist()
    ([9, 7, 7, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 3, 4, 3, 4, 5])
    """
    if not examples:
        raise ValueError("nothing to pack")
    first = examples[0]
    n0 = shared_prefix_len(first)
    prefix = first["input_ids"][:n0]
    for e in examples[1:]:
        if e["n_frames"] != first["n_frames"] or shared_prefix_len(e) != n0 or \
                not torch.equal(e["input_ids"][:n0], prefix):
            raise NotPackable(f"examples {first.get('idx')} and {e.get('idx')} do not share the prompt up to "
                              "the last frame token (different videos or a layout that depends on the question)")
        if bool((e["labels"][:n0] != IGNORE_INDEX).any()) or bool((e["evi_tok_pos"] < n0).any()):
            raise NotPackable(f"example {e.get('idx')} has targets inside the shared prefix")
    ids, labels, seg, pos = [prefix], [first["labels"][:n0]], [torch.zeros(n0, dtype=torch.long)], [torch.arange(n0)]
    evi = {k: [] for k in ("evi_tok_pos", "evi_pred_pos", "evi_spans", "evi_frames", "evi_event", "evi_stage",
                           "evi_role")}
    pairs, n_evi, at = [], 0, n0
    for i, e in enumerate(examples, start=1):
        n = len(e["input_ids"]) - n0
        ids.append(e["input_ids"][n0:])
        labels.append(e["labels"][n0:])
        seg.append(torch.full((n,), i, dtype=torch.long))
        pos.append(torch.arange(n0, n0 + n))
        shift = at - n0
        for k in evi:
            evi[k].append(e[k] + shift if k in ("evi_tok_pos", "evi_pred_pos") else e[k])
        pairs += [(n_evi + a, n_evi + b) for a, b in consistency_pairs(e)]
        n_evi += len(e["evi_tok_pos"])
        at += n
    out = {k: v for k, v in first.items() if k in ("frame_start", "n_frames", "frame_pos", "token_of_frame", "video")}
    out.update({"input_ids": torch.cat(ids), "labels": torch.cat(labels), "segment_ids": torch.cat(seg),
                "position_ids": torch.cat(pos), **{k: torch.cat(v) for k, v in evi.items()},
                "evi_pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
                "response": [e["response"] for e in examples], "idx": [e.get("idx") for e in examples],
                "n_queries": len(examples)})
    return out


def consistency_pairs(ex: dict) -> list[tuple[int, int]]:
    """(prefix k, answer k') index pairs of one example's ``<evi>`` tokens for the same event/role
    (a packed example carries its pairs in ``evi_pairs``)."""
    if "evi_pairs" in ex:
        return [tuple(p) for p in ex["evi_pairs"].tolist()]
    first = {}
    for k, (ev, st, ro) in enumerate(zip(ex["evi_event"].tolist(), ex["evi_stage"].tolist(), ex["evi_role"].tolist())):
        if st == STAGE_PREFIX:
            first.setdefault((ev, ro), k)
    return [(first[(ev, ro)], k) for k, (ev, st, ro) in
            enumerate(zip(ex["evi_event"].tolist(), ex["evi_stage"].tolist(), ex["evi_role"].tolist()))
            if st == STAGE_ANSWER and (ev, ro) in first]


def collate(examples: Sequence[dict], pad_id: int, padding_side: str = "right",
            frames: Sequence[torch.Tensor] | None = None, tower_feats: Sequence[torch.Tensor] | None = None,
            video_index: Sequence[int] | None = None) -> dict:
    """Batch encoded examples for :meth:`d2lib.vlm.model.D2VLM.forward` / ``generate``.

    ``padding_side``: "right" for training, "left" for generation (the prompts then end together).
    ``frames``: per example uint8 (T, H, W, 3); or ``tower_feats``: per example cached
    :meth:`~d2lib.vlm.model.D2VLM.encode_tower` outputs (T, S, P, D). Padded to the longest video.
    ``video_index`` (one int per example): ``frames``/``tower_feats`` then hold each distinct video
    once (U of them) and example b shows video ``video_index[b]`` — the batch gets ``video_index``
    (B,) and the model runs the tower once per video.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (B, L); ``frame_start`` (B,),
    ``frame_mask`` (B, Tmax); ``frames`` or ``tower_feats`` (B, Tmax, ...); and flattened over all
    ``<evi>`` of the batch (N of them): ``evi_batch``, ``evi_tok_pos``, ``evi_pred_pos``,
    ``evi_role`` (N,), ``evi_frames`` (N, 2); ``evi_pairs`` (M, 2) consistency pairs into N.
    With the peers' layouts (examples with ``frame_pos``) also ``frame_pos`` (B, K) slot positions,
    ``token_mask`` (B, K) bool and, when every example has one, ``token_of_frame`` (B, Tmax).
    With packed examples (:func:`pack_examples`; right padding only) also ``segment_ids`` and
    ``position_ids`` (B, L) (an unpacked row of the batch is one segment 0 at positions 0..n-1).
    """
    B = len(examples)
    L = max(len(e["input_ids"]) for e in examples)
    T = max(e["n_frames"] for e in examples)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    frame_start = torch.zeros(B, dtype=torch.long)
    frame_mask = torch.zeros(B, T, dtype=torch.bool)
    evi = {k: [] for k in ("evi_batch", "evi_tok_pos", "evi_pred_pos", "evi_role", "evi_frames")}
    pairs, n_seen = [], 0
    packed = any("segment_ids" in e for e in examples)
    if packed and padding_side != "right":
        raise ValueError("packed examples (pack_examples) are for training: collate them with right padding")
    seg = torch.zeros(B, L, dtype=torch.long)
    pos = torch.arange(L)[None].repeat(B, 1)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        off = L - n if padding_side == "left" else 0
        input_ids[b, off:off + n] = e["input_ids"]
        labels[b, off:off + n] = e["labels"]
        attn[b, off:off + n] = 1
        if "segment_ids" in e:
            seg[b, :n], pos[b, :n] = e["segment_ids"], e["position_ids"]
        frame_start[b] = e["frame_start"] + off
        frame_mask[b, : e["n_frames"]] = True
        k = len(e["evi_tok_pos"])
        evi["evi_batch"].append(torch.full((k,), b, dtype=torch.long))
        evi["evi_tok_pos"].append(e["evi_tok_pos"] + off)
        evi["evi_pred_pos"].append(e["evi_pred_pos"] + off)
        evi["evi_role"].append(e["evi_role"])
        evi["evi_frames"].append(e["evi_frames"])
        pairs += [(n_seen + i, n_seen + j) for i, j in consistency_pairs(e)]
        n_seen += k
    if any("frame_pos" in e for e in examples):
        if not all("frame_pos" in e for e in examples):
            raise ValueError("cannot batch examples of different frame layouts (frame_pos in some only)")
        K = max(len(e["frame_pos"]) for e in examples)
        fpos = torch.zeros(B, K, dtype=torch.long)
        tmask = torch.zeros(B, K, dtype=torch.bool)
        for b, e in enumerate(examples):
            off = L - len(e["input_ids"]) if padding_side == "left" else 0
            fpos[b, : len(e["frame_pos"])] = e["frame_pos"] + off
            tmask[b, : len(e["frame_pos"])] = True
        tof = pad_maps([e.get("token_of_frame") for e in examples], T)
        extra = {"frame_pos": fpos, "token_mask": tmask, **({"token_of_frame": tof} if tof is not None else {})}
    else:
        extra = {}
    batch = {"input_ids": input_ids, "attention_mask": attn, "labels": labels,
             "frame_start": frame_start, "frame_mask": frame_mask, **extra,
             **{k: torch.cat(v) for k, v in evi.items()},
             "evi_pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)}
    if packed:
        batch.update(segment_ids=seg, position_ids=pos)
    if video_index is not None:
        batch["video_index"] = torch.as_tensor(list(video_index), dtype=torch.long)
    if frames is not None:
        batch["frames"] = _pad_stack(frames, T)
    if tower_feats is not None:
        batch["tower_feats"] = _pad_stack(tower_feats, T)
    return batch


def pad_maps(maps: Sequence[torch.Tensor | None], T: int) -> torch.Tensor | None:
    """Stack per-example (T_i,) token maps into (B, T) long (0 past a video's end); ``None`` if any is.

    >>> pad_maps([torch.tensor([0, 0, 1]), torch.tensor([0])], 3).tolist(), pad_maps([None], 3)
    ([[0, 0, 1], [0, 0, 0]], None)
    """
    if any(m is None for m in maps):
        return None
    out = torch.zeros(len(maps), T, dtype=torch.long)
    for b, m in enumerate(maps):
        out[b, : len(m)] = m
    return out


def _pad_stack(xs: Sequence[torch.Tensor], T: int) -> torch.Tensor:
    """Stack per-video tensors (T_i, ...) into (B, T, ...) with zeros after each video's end."""
    xs = [torch.as_tensor(x) for x in xs]
    out = xs[0].new_zeros((len(xs), T, *xs[0].shape[1:]))
    for b, x in enumerate(xs):
        out[b, : x.shape[0]] = x
    return out
