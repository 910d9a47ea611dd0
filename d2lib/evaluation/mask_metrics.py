"""Pixel-level grounding metrics: region J, boundary F, J&F, vIoU and grounded-caption mask scores.

Taught in lesson ``09``, pixel grounding, where a VideoGLaMM-style model answers with ``<seg>`` tokens
that decode to one mask per frame. All functions are pure numpy (scipy for dilation and matching).

A **mask** is a boolean array (``bool``, or numbers that are all 0/1) shaped ``(H, W)`` for one frame or
``(T, H, W)`` for a video; anything else raises ``ValueError`` naming the problem.

* **Region similarity J** (:func:`region_j`, :func:`video_j`) — the Jaccard index of one frame,
  ``|P ∩ G| / |P ∪ G|``: the pixels both masks cover over the pixels either covers. Two empty masks
  agree perfectly and score 1.0 (the DAVIS convention). A video's J is the mean over its frames.
* **Boundary F** (:func:`boundary_f`, :func:`video_f`) — how well the *outlines* agree, as the DAVIS
  benchmark defines it. Each mask's outline is the set of pixels that differ from their right, bottom or
  bottom-right neighbour (:func:`seg2bmap`, neighbours outside the frame are not compared). A predicted
  outline pixel is *matched* when a ground-truth outline pixel lies within a disk of radius ``r``
  (:func:`boundary_radius`: ``bound_th`` pixels if ``bound_th >= 1``, else
  ``ceil(bound_th * diagonal)``, 8 px at 480×854 for the default 0.008). Precision is the share of
  predicted outline pixels that are matched, recall the share of ground-truth outline pixels matched
  by the prediction, and F their harmonic mean. Both outlines empty gives F = 1, one empty gives F = 0.
* **J&F** (:func:`j_and_f`) — the mean of a video's J and F, the DAVIS / MeViS / Ref-YouTube-VOS headline.
* **vIoU** (:func:`viou`, :func:`viou_summary`) — VidSTG spatio-temporal grounding. The prediction is a
  temporal span plus a tube (a mask or box per frame); vIoU sums the per-frame IoU over the frames
  *both* spans cover and divides by the number of frames *either* span covers, so a wrong span costs
  as much as a wrong mask. A set of videos is summarised by m_vIoU (the mean) and vIoU@0.3 / vIoU@0.5
  (the share of videos reaching the threshold).
* **Grounded-caption mask scores** (:func:`gcg_mask_scores`) — GLaMM's GCG task: a caption grounds
  several phrases, each with a mask. Predicted and ground-truth masks are paired one-to-one (Hungarian
  assignment maximising total IoU); mIoU averages the paired IoU over the ground-truth masks and
  recall counts the pairs reaching the IoU threshold.

>>> import numpy as np
>>> gt = np.zeros((4, 4), bool); gt[1:3, 1:3] = True
>>> pred = np.zeros((4, 4), bool); pred[1:3, 1:4] = True
>>> region_j(pred, gt), boundary_f(gt, gt)
(0.6666666666666666, 1.0)
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "region_j", "video_j", "seg2bmap", "boundary_radius", "boundary_precision_recall", "boundary_f",
    "video_f", "j_and_f", "viou", "viou_summary", "mask_iou_matrix", "gcg_mask_scores",
]


# ----------------------------------------------------------------------------------------- checks

def _as_mask(x, name: str, ndims: tuple[int, ...] = (2,)) -> np.ndarray:
    """``x`` as a boolean array with ``ndim`` in ``ndims``, or ``ValueError`` saying what is wrong."""
    a = np.asarray(x)
    if a.dtype != bool:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"{name} must be a boolean mask or hold only 0/1, got dtype {a.dtype}")
        ok = (a == 0) | (a == 1)
        if not ok.all():
            bad = np.unique(a[~ok])[:3].tolist()
            raise ValueError(f"{name} must be a boolean mask or hold only 0/1, got values such as {bad}")
        a = a.astype(bool)
    if a.ndim not in ndims:
        want = " or ".join({2: "(H, W)", 3: "(T, H, W)"}[n] for n in ndims)
        raise ValueError(f"{name} must be shaped {want}, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}): no frames or no pixels")
    return a


def _mask_pair(pred, gt, ndims: tuple[int, ...] = (2,)) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_mask(pred, "pred", ndims), _as_mask(gt, "gt", ndims)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p, g


def _video_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """``(T, H, W)`` pair; an ``(H, W)`` pair is one frame."""
    p, g = _mask_pair(pred, gt, (2, 3))
    return (p[None], g[None]) if p.ndim == 2 else (p, g)


def _iou_parts(p: np.ndarray, g: np.ndarray) -> tuple[int, int]:
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


# ----------------------------------------------------------------------------------------- region J

def region_j(pred, gt) -> float:
    """Jaccard index ``|P ∩ G| / |P ∪ G|`` of one frame; 1.0 when both masks are empty (DAVIS).

    ``pred``, ``gt``: ``(H, W)`` boolean masks.

    >>> region_j([[1, 1, 0, 0]], [[0, 1, 1, 0]])   # 1 shared pixel of 3 covered
    0.3333333333333333
    >>> region_j([[0, 0]], [[0, 0]])
    1.0
    """
    inter, union = _iou_parts(*_mask_pair(pred, gt))
    return 1.0 if union == 0 else inter / union


def video_j(pred, gt) -> float:
    """Mean :func:`region_j` over the frames of ``(T, H, W)`` masks (an ``(H, W)`` pair is one frame).

    >>> video_j([[[1, 0]], [[1, 1]]], [[[1, 0]], [[1, 0]]])   # frames: 1/1 and 1/2
    0.75
    """
    p, g = _video_pair(pred, gt)
    return float(np.mean([region_j(pf, gf) for pf, gf in zip(p, g)]))


# ----------------------------------------------------------------------------------------- boundary F

def seg2bmap(mask) -> np.ndarray:
    """The DAVIS boundary map of an ``(H, W)`` mask, same shape, boolean.

    A pixel is on the boundary when it differs from its right, bottom or bottom-right neighbour;
    neighbours outside the frame are not compared (so the last row compares only rightwards, the last
    column only downwards, and the bottom-right pixel is never a boundary). The outline therefore sits
    half a pixel towards the origin and may fall on background pixels. A mask that is empty or fills
    the whole frame has no boundary.

    >>> seg2bmap([[0, 0, 0], [0, 1, 0], [0, 0, 0]]).astype(int)
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 0]])
    """
    m = _as_mask(mask, "mask")
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]          # right neighbour
    b[:-1, :] |= m[:-1, :] != m[1:, :]          # bottom neighbour
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]     # bottom-right neighbour
    return b


def boundary_radius(shape: Sequence[int], bound_th: float = 0.008) -> int:
    """Matching tolerance in pixels for a frame of ``shape`` ``(H, W)``.

    ``bound_th >= 1`` is a pixel count (a whole number); below 1 it is a fraction of the frame diagonal,
    rounded up: ``ceil(bound_th * sqrt(H² + W²))`` (0 means outlines must coincide exactly).

    >>> boundary_radius((480, 854)), boundary_radius((8, 8)), boundary_radius((8, 8), 3)
    (8, 1, 3)
    """
    if not (isinstance(bound_th, (int, float, np.integer, np.floating)) and math.isfinite(bound_th)):
        raise ValueError(f"bound_th must be a finite number, got {bound_th!r}")
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"a pixel tolerance (bound_th >= 1) must be a whole number, got {bound_th}")
        return int(bound_th)
    # same arithmetic as DAVIS: threshold times the norm of the shape, then ceil
    return int(math.ceil(bound_th * float(np.linalg.norm(tuple(shape)))))


def _disk(radius: int) -> np.ndarray:
    """Boolean ``(2r+1, 2r+1)`` disk: offsets with ``dx² + dy² <= r²``."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def boundary_precision_recall(pred, gt, bound_th: float = 0.008) -> tuple[float, float]:
    """Boundary precision and recall of one ``(H, W)`` frame (see :func:`boundary_f`).

    Precision: matched predicted outline pixels / predicted outline pixels; recall: matched ground-truth
    outline pixels / ground-truth outline pixels. Empty outlines follow DAVIS: both empty → (1, 1),
    prediction empty → (1, 0), ground truth empty → (0, 1).

    >>> gt = np.zeros((6, 6), bool); gt[2:4, 2:4] = True
    >>> boundary_precision_recall(np.roll(gt, 1, axis=1), gt, bound_th=0)   # 4 of 8 outline px coincide
    (0.5, 0.5)
    """
    p, g = _mask_pair(pred, gt)
    pb, gb = seg2bmap(p), seg2bmap(g)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 or n_g == 0:
        return (1.0 if n_p == 0 else 0.0), (1.0 if n_g == 0 else 0.0)
    disk = _disk(boundary_radius(p.shape, bound_th))
    pd = ndimage.binary_dilation(pb, structure=disk)
    gd = ndimage.binary_dilation(gb, structure=disk)
    return int((pb & gd).sum()) / n_p, int((gb & pd).sum()) / n_g


def boundary_f(pred, gt, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure of one frame: ``2PR / (P + R)`` of :func:`boundary_precision_recall`.

    ``pred``, ``gt``: ``(H, W)`` masks. ``bound_th``: tolerance, see :func:`boundary_radius` (at most a
    few pixels on small frames: any ``bound_th`` in ``(0, 1)`` gives radius 1 below a 125-px diagonal).
    Both outlines empty → 1.0; one empty → 0.0. Note that a mask filling the whole frame has no outline,
    so a full prediction against an empty ground truth scores F = 1 (while J = 0), as in DAVIS.

    >>> gt = np.zeros((6, 6), bool); gt[2:4, 2:4] = True
    >>> boundary_f(np.roll(gt, 1, axis=1), gt), boundary_f(np.roll(gt, 1, axis=1), gt, bound_th=0)
    (1.0, 0.5)
    """
    prec, rec = boundary_precision_recall(pred, gt, bound_th)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def video_f(pred, gt, bound_th: float = 0.008) -> float:
    """Mean :func:`boundary_f` over the frames of ``(T, H, W)`` masks (an ``(H, W)`` pair is one frame).

    >>> video_f(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool))
    1.0
    """
    p, g = _video_pair(pred, gt)
    return float(np.mean([boundary_f(pf, gf, bound_th) for pf, gf in zip(p, g)]))


def j_and_f(pred, gt, bound_th: float = 0.008) -> dict:
    """``{"J": video_j, "F": video_f, "J&F": their mean}`` of one object's ``(T, H, W)`` masks.

    The frames scored are the ones passed (DAVIS semi-supervised evaluation drops the first and last
    frame before calling it; that is the caller's choice).

    >>> gt = np.zeros((1, 4, 4), bool); gt[0, 1:3, 1:3] = True
    >>> j_and_f(gt, gt)
    {'J': 1.0, 'F': 1.0, 'J&F': 1.0}
    """
    j, f = video_j(pred, gt), video_f(pred, gt, bound_th)
    return {"J": j, "F": f, "J&F": (j + f) / 2}


# ----------------------------------------------------------------------------------------- vIoU

def _span_frames(span, name: str, frames: set[int] | None) -> set[int]:
    try:
        start, end = span
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (start, end) pair of frame indices, got {span!r}") from None
    for v in (start, end):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or v != int(v):
            raise ValueError(f"{name} must hold whole frame indices, got {span!r}")
    start, end = int(start), int(end)
    if not 0 <= start <= end:
        raise ValueError(f"{name} must satisfy 0 <= start <= end, got {span!r}")
    if frames is None:
        return set(range(start, end + 1))
    return {t for t in frames if start <= t <= end}


def _frame_iou(pred, gt, t: int) -> Fraction:
    """Exact IoU of one frame's masks (``(H, W)``) or boxes (``(x1, y1, x2, y2)``); 1 when both are empty."""
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim == 2 or g.ndim == 2:
        try:
            pm, gm = _mask_pair(p, g)
        except ValueError as e:
            raise ValueError(f"frame {t}: {e}") from None
        inter, union = _iou_parts(pm, gm)
        return Fraction(1) if union == 0 else Fraction(inter, union)
    if p.shape != (4,) or g.shape != (4,) or p.dtype == bool or g.dtype == bool:
        raise ValueError(f"frame {t}: a tube entry must be an (H, W) mask or an (x1, y1, x2, y2) box, "
                         f"got shapes {p.shape} and {g.shape}")
    boxes = []
    for b, name in ((p, "pred"), (g, "gt")):
        if not np.all(np.isfinite(b.astype(float))) or b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"frame {t}: {name} box must be finite (x1, y1, x2, y2) with x1 <= x2, "
                             f"y1 <= y2, got {b.tolist()}")
        boxes.append([Fraction(float(v)) for v in b])
    (px1, py1, px2, py2), (gx1, gy1, gx2, gy2) = boxes
    iw = max(Fraction(0), min(px2, gx2) - max(px1, gx1))
    ih = max(Fraction(0), min(py2, gy2) - max(py1, gy1))
    inter = iw * ih
    union = (px2 - px1) * (py2 - py1) + (gx2 - gx1) * (gy2 - gy1) - inter
    return Fraction(1) if union == 0 else inter / union


def viou(pred_tubes: Mapping[int, object], gt_tubes: Mapping[int, object], pred_span, gt_span,
         frames: Iterable[int] | None = None) -> float:
    """VidSTG vIoU of one video: ``(1/|S_u|) Σ_{t ∈ S_i} IoU(pred_t, gt_t)``.

    ``pred_tubes``, ``gt_tubes``: frame index → ``(H, W)`` boolean mask (or ``(x1, y1, x2, y2)`` box;
    a dict, or a ``(T, H, W)`` array indexed by frame). ``pred_span``, ``gt_span``: ``(start, end)``
    frame indices, both ends included. ``S_p``, ``S_g`` are the frames of each span — only those listed
    in ``frames`` when given (the frames actually sampled for evaluation), else every integer frame.
    ``S_i = S_p ∩ S_g`` and ``S_u = S_p ∪ S_g``: frames where only one span says the object is present
    add nothing to the sum but count in the denominator. Both tubes must hold every frame of ``S_i``;
    frames outside it are ignored. Per-frame IoU is mask IoU (1 when both masks are empty) or box IoU.
    The sum is exact (fractions), the result its correctly rounded float, so threshold ties are decided
    exactly by :func:`viou_summary`.

    >>> m = np.ones((2, 2), bool)
    >>> viou({t: m for t in range(4)}, {t: m for t in range(2, 6)}, (0, 3), (2, 5))  # 2 shared of 6
    0.3333333333333333
    """
    fs = None
    if frames is not None:
        fs = set()
        for t in frames:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"frames must be whole frame indices, got {t!r}")
            fs.add(int(t))
    s_p = _span_frames(pred_span, "pred_span", fs)
    s_g = _span_frames(gt_span, "gt_span", fs)
    s_u, s_i = s_p | s_g, s_p & s_g
    if not s_u:
        raise ValueError("no evaluated frame falls in either span: vIoU is undefined")
    total = Fraction(0)
    for t in sorted(s_i):
        got = []
        for tubes, name in ((pred_tubes, "pred_tubes"), (gt_tubes, "gt_tubes")):
            try:
                got.append(tubes[t])
            except (KeyError, IndexError):
                raise ValueError(f"{name} has no entry for frame {t}, which both spans cover") from None
        total += _frame_iou(got[0], got[1], t)
    return float(total / len(s_u))


def viou_summary(vious: Iterable[float], thresholds: Sequence[float] = (0.3, 0.5)) -> dict:
    """Corpus summary of per-video vIoU: ``m_vIoU`` (mean) and ``vIoU@θ`` (share with vIoU ``>= θ``).

    TubeDETR's VidSTG evaluator counts ``vIoU > θ`` (strictly); the two differ only on exact ties.

    >>> viou_summary([0.2, 0.3, 0.6, 0.9])
    {'m_vIoU': 0.5, 'vIoU@0.3': 0.75, 'vIoU@0.5': 0.5}
    """
    v = np.asarray(list(vious), dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"vious must be a non-empty list of numbers, got shape {v.shape}")
    if not (np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()):
        raise ValueError("every vIoU must lie in [0, 1]")
    out = {"m_vIoU": float(v.mean())}
    for th in thresholds:
        if not 0 <= th <= 1:
            raise ValueError(f"thresholds must lie in [0, 1], got {th}")
        out[f"vIoU@{th:g}"] = float(np.mean(v >= th))
    return out


# ----------------------------------------------------------------------------------------- GCG masks

def _mask_list(masks, name: str, allow_empty: bool) -> np.ndarray:
    """A list of ``(H, W)`` masks (or an ``(N, H, W)`` array) as an ``(N, H, W)`` boolean array."""
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise ValueError(f"{name} must be a list of (H, W) masks or an (N, H, W) array, "
                         f"got an array of shape {masks.shape}")
    items = list(masks)
    if not items:
        if allow_empty:
            return np.zeros((0, 0, 0), bool)
        raise ValueError(f"{name} is empty: at least one mask is needed")
    arrs = [_as_mask(m, f"{name}[{i}]") for i, m in enumerate(items)]
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise ValueError(f"{name} mixes mask shapes {sorted(shapes)}")
    return np.stack(arrs)


def mask_iou_matrix(pred_masks, gt_masks) -> np.ndarray:
    """IoU of every predicted mask with every ground-truth mask, ``(N_pred, N_gt)`` float array.

    Each argument is a list of ``(H, W)`` masks or an ``(N, H, W)`` array; two empty masks have IoU 1.

    >>> mask_iou_matrix([[[1, 1, 0]]], [[[1, 0, 0]], [[0, 0, 1]]])
    array([[0.5, 0. ]])
    """
    p = _mask_list(pred_masks, "pred_masks", allow_empty=True)
    g = _mask_list(gt_masks, "gt_masks", allow_empty=False)
    if len(p) == 0:
        return np.zeros((0, len(g)))
    if p.shape[1:] != g.shape[1:]:
        raise ValueError(f"pred and gt mask shapes differ: {p.shape[1:]} vs {g.shape[1:]}")
    pf = p.reshape(len(p), -1).astype(np.float64)   # pixel counts stay exact in float64
    gf = g.reshape(len(g), -1).astype(np.float64)
    inter = pf @ gf.T
    union = pf.sum(1)[:, None] + gf.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, 1.0, inter / union)


def _greedy_pairs(iou: np.ndarray) -> list[tuple[int, int]]:
    """GLaMM's pairing: repeatedly take the highest remaining IoU (first in row-major order on ties)."""
    m = iou.copy()
    pairs = []
    while m.size and m.max() > 0:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        pairs.append((int(i), int(j)))
        m[i, :] = -1
        m[:, j] = -1
    return pairs


def gcg_mask_scores(pred_masks, gt_masks, iou_threshold: float = 0.5, matching: str = "hungarian") -> dict:
    """Mask scores of one grounded caption (GLaMM's GCG task), from one-to-one mask pairing.

    ``pred_masks``, ``gt_masks``: lists of ``(H, W)`` masks (or ``(N, H, W)`` arrays) of one image or
    frame. Masks are paired one-to-one by ``matching``: ``"hungarian"`` (default) maximises the total
    IoU (:func:`scipy.optimize.linear_sum_assignment`); ``"greedy"`` is GLaMM's evaluator, which keeps
    taking the highest remaining IoU and can strand a ground-truth mask the optimum would have covered.
    Pairs with IoU 0 are not pairs. Returns

    * ``mIoU`` — sum of paired IoU / number of ground-truth masks: an unpaired ground-truth mask counts 0;
    * ``mIoU_matched`` — sum of paired IoU / number of pairs (GLaMM's denominator; 0.0 without pairs);
    * ``recall`` — pairs with IoU ``>= iou_threshold`` / number of ground-truth masks;
    * ``n_gt``, ``n_pred``, ``n_hits`` (so a corpus recall can be pooled as Σ hits / Σ GT, as GLaMM
      does) and ``pairs``, a list of ``(pred_index, gt_index, iou)``.

    Why unpaired ground truth counts 0: GLaMM's ``compute_miou`` averages over pairs only, so a caption
    that grounds one phrase perfectly and leaves four unsegmented scores mIoU 1.0; dividing by the
    ground-truth count makes mIoU fall with every missed phrase, as recall does. ``mIoU_matched`` with
    ``matching="greedy"`` gives GLaMM's per-image value. Extra predicted masks are not penalised by either
    mIoU or recall (``n_pred`` shows them). GLaMM's recall also requires each pair's phrases to match
    (BERT similarity >= 0.5); this mask-only recall is an upper bound on it. An empty prediction list is
    a valid answer (all zeros); an empty ground-truth list raises ``ValueError``.

    >>> gt = [[[1, 1, 0, 0]], [[0, 0, 1, 1]]]
    >>> s = gcg_mask_scores([[[1, 1, 1, 0]]], gt)   # one mask, IoU 2/3 with the first GT
    >>> round(s["mIoU"], 4), round(s["mIoU_matched"], 4), s["recall"]
    (0.3333, 0.6667, 0.5)
    """
    if matching not in ("hungarian", "greedy"):
        raise ValueError(f"matching must be 'hungarian' or 'greedy', got {matching!r}")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    iou = mask_iou_matrix(pred_masks, gt_masks)
    n_pred, n_gt = iou.shape
    if n_pred == 0:
        idx: list[tuple[int, int]] = []
    elif matching == "hungarian":
        rows, cols = linear_sum_assignment(iou, maximize=True)
        idx = [(int(i), int(j)) for i, j in zip(rows, cols)]
    else:
        idx = _greedy_pairs(iou)
    pairs = [(i, j, float(iou[i, j])) for i, j in idx if iou[i, j] > 0]
    total = sum(v for _, _, v in pairs)
    n_hits = sum(v >= iou_threshold for _, _, v in pairs)
    return {
        "mIoU": total / n_gt,
        "mIoU_matched": total / len(pairs) if pairs else 0.0,
        "recall": n_hits / n_gt,
        "n_gt": n_gt,
        "n_pred": n_pred,
        "n_hits": int(n_hits),
        "pairs": pairs,
    }
