"""d2lib.evaluation.mask_metrics: J, boundary F, J&F, vIoU and GCG mask scores on masks counted by hand."""
import itertools
import math

import numpy as np
import pytest

from d2lib.evaluation import mask_metrics as mm


def grid(rows):
    """A boolean mask from strings: '#' is foreground, '.' background."""
    return np.array([[c == "#" for c in r] for r in rows])


def square(h, w, r0, c0, size=2):
    m = np.zeros((h, w), bool)
    m[r0:r0 + size, c0:c0 + size] = True
    return m


GT4 = grid(["....",
            ".##.",
            ".##.",
            "...."])
PRED4 = grid([".###",
              ".###",
              "....",
              "...."])
EMPTY4 = np.zeros((4, 4), bool)


# ----------------------------------------------------------------------------------------- region J

def test_region_j_hand_counted():
    # GT: 4 px (rows 1-2, cols 1-2); pred: 6 px (rows 0-1, cols 1-3)
    # P ∩ G = row 1, cols 1-2 = 2 px; P ∪ G = 4 + 6 - 2 = 8 px  ->  J = 2/8
    assert mm.region_j(PRED4, GT4) == 0.25
    assert mm.region_j(GT4, PRED4) == 0.25
    assert mm.region_j(GT4, GT4) == 1.0
    # 0/1 integers and floats are accepted as masks
    assert mm.region_j(PRED4.astype(np.uint8), GT4.astype(float)) == 0.25


def test_region_j_empty_masks():
    assert mm.region_j(EMPTY4, EMPTY4) == 1.0      # DAVIS: nothing to find, nothing found
    assert mm.region_j(EMPTY4, GT4) == 0.0         # 0 / 4
    assert mm.region_j(GT4, EMPTY4) == 0.0


def test_video_j_is_the_frame_mean():
    pred = np.stack([EMPTY4, PRED4, EMPTY4])
    gt = np.stack([EMPTY4, GT4, GT4])
    # frames: both empty 1, hand-counted 2/8, missed 0  ->  (1 + 0.25 + 0) / 3
    assert mm.video_j(pred, gt) == pytest.approx(1.25 / 3)
    assert mm.video_j(PRED4, GT4) == 0.25            # an (H, W) pair is one frame


# ----------------------------------------------------------------------------------------- seg2bmap

def test_seg2bmap_hand_counted():
    # A pixel is boundary if it differs from its right, bottom or bottom-right neighbour:
    # (0,0) differs bottom-right from (1,1); (0,1), (0,2) from the pixel below; (1,0), (2,0) from the
    # right; (1,2), (2,2) are foreground with background to the right; (2,1) has background below.
    # Column 3 compares only downwards (all background) and row 3 only rightwards (all background).
    expected = grid(["###.",
                     "#.#.",
                     "###.",
                     "...."])
    assert np.array_equal(mm.seg2bmap(GT4), expected)


def test_seg2bmap_edges_and_full_mask():
    # Foreground in the last column: column 1 differs from its right neighbour on every row
    # (row 2, the last, compares rightwards only: 0 vs 1); column 2 compares downwards only: 1 vs 1.
    right_edge = grid(["..#",
                       "..#",
                       "..#"])
    assert np.array_equal(mm.seg2bmap(right_edge), grid([".#.", ".#.", ".#."]))
    assert not mm.seg2bmap(np.ones((3, 3), bool)).any()
    assert not mm.seg2bmap(np.zeros((3, 3), bool)).any()


def _davis_bmap(seg):
    """The DAVIS construction, written out: shifted copies padded with background, then the last row,
    last column and corner overwritten so that only neighbours inside the frame are compared."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def test_seg2bmap_matches_davis_construction_on_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 5), (5, 1), (7, 9), (12, 12)]:
        for _ in range(5):
            m = rng.random(shape) < 0.4
            assert np.array_equal(mm.seg2bmap(m), _davis_bmap(m))


# ----------------------------------------------------------------------------------------- boundary F

# 8x8 frame, GT = 2x2 square at rows 3-4, cols 2-3. Its outline (rows 2-4, cols 1-3, minus the centre):
#   (2,1) (2,2) (2,3)
#   (3,1)       (3,3)
#   (4,1) (4,2) (4,3)            8 px; a shifted square has the same outline, shifted.
GT8 = square(8, 8, 3, 2)
SHIFT1 = square(8, 8, 3, 3)      # 1 px to the right
SHIFT2 = square(8, 8, 3, 4)      # 2 px to the right


def test_boundary_radius():
    assert mm.boundary_radius((8, 8)) == 1             # ceil(0.008 * 11.31) = ceil(0.09)
    assert mm.boundary_radius((100, 100)) == 2         # ceil(0.008 * 141.42) = ceil(1.13)
    assert mm.boundary_radius((480, 854)) == 8         # ceil(0.008 * 979.6) = ceil(7.84): DAVIS 480p
    assert mm.boundary_radius((8, 8), 3) == 3          # >= 1: pixels
    assert mm.boundary_radius((8, 8), 0) == 0
    with pytest.raises(ValueError, match="whole number"):
        mm.boundary_radius((8, 8), 1.5)
    with pytest.raises(ValueError, match=">= 0"):
        mm.boundary_radius((8, 8), -0.1)


def test_boundary_f_one_pixel_shift_within_tolerance():
    # Pred outline = GT outline shifted right: (2,2) (2,3) (2,4) / (3,2) (3,4) / (4,2) (4,3) (4,4).
    # Radius 1 (a plus-shaped disk; the default on 8x8): every pred outline px has a GT outline px at
    # distance <= 1 (e.g. (2,4) -> (2,3), (3,2) -> (3,1)), and vice versa  ->  P = R = 1, F = 1.
    assert mm.boundary_precision_recall(SHIFT1, GT8, bound_th=1) == (1.0, 1.0)
    assert mm.boundary_f(SHIFT1, GT8) == 1.0
    assert mm.boundary_f(SHIFT1, GT8, bound_th=1) == 1.0


def test_boundary_f_one_pixel_shift_outside_zero_tolerance():
    # Radius 0: only coinciding outline px match: (2,2) (2,3) (4,2) (4,3) -> 4 of 8 each way.
    # P = R = 4/8, F = 2 * 0.5 * 0.5 / 1 = 0.5
    assert mm.boundary_precision_recall(SHIFT1, GT8, bound_th=0) == (0.5, 0.5)
    assert mm.boundary_f(SHIFT1, GT8, bound_th=0) == 0.5


def test_boundary_f_two_pixel_shift_outside_radius_one():
    # Pred outline: (2,3) (2,4) (2,5) / (3,3) (3,5) / (4,3) (4,4) (4,5).
    # Radius 1: (2,3) (3,3) (4,3) coincide with GT, (2,4) (4,4) have GT px (2,3) (4,3) at distance 1,
    # column 5 is 2 px from the nearest GT outline px (column 3)  ->  P = 5/8.
    # Mirror image for recall: GT column 1 unmatched, (2,2) (4,2) matched at distance 1  ->  R = 5/8.
    # F = 2 * (5/8)^2 / (10/8) = 5/8
    assert mm.boundary_precision_recall(SHIFT2, GT8, bound_th=1) == (0.625, 0.625)
    assert mm.boundary_f(SHIFT2, GT8) == 0.625
    # radius 2 reaches column 5 from column 3 (dx = 2): everything matches
    assert mm.boundary_f(SHIFT2, GT8, bound_th=2) == 1.0


def test_boundary_f_asymmetric_precision_recall():
    # Pred = the GT square plus a stray pixel at (6,6), far from it. The stray pixel's outline is
    # (5,5) (5,6) (6,5) (6,6) -- (5,7) compares only downwards, to (6,7) = background like itself.
    # Pred outline = 8 + 4 = 12 px; the 8 square px match, the 4 stray px are >= sqrt(5) px from GT's.
    # P = 8/12 = 2/3, R = 8/8 = 1, F = 2 * (2/3) * 1 / (2/3 + 1) = 0.8
    pred = GT8.copy()
    pred[6, 6] = True
    assert mm.seg2bmap(pred).sum() == 12
    p, r = mm.boundary_precision_recall(pred, GT8, bound_th=1)
    assert (p, r) == (pytest.approx(2 / 3), 1.0)
    assert mm.boundary_f(pred, GT8, bound_th=1) == pytest.approx(0.8)


def test_boundary_f_empty_outlines():
    empty = np.zeros((8, 8), bool)
    assert mm.boundary_f(empty, empty) == 1.0
    assert mm.boundary_precision_recall(empty, GT8) == (1.0, 0.0)
    assert mm.boundary_precision_recall(GT8, empty) == (0.0, 1.0)
    assert mm.boundary_f(empty, GT8) == 0.0
    assert mm.boundary_f(GT8, empty) == 0.0
    # DAVIS quirk, kept: a full-frame mask has no outline, so against an empty GT both outlines are empty
    full = np.ones((8, 8), bool)
    assert mm.boundary_f(full, empty) == 1.0
    assert mm.region_j(full, empty) == 0.0


def _naive_f(pred, gt, radius):
    """Boundary F by brute force: a px matches if some px of the other outline is within `radius`."""
    pb, gb = _davis_bmap(pred), _davis_bmap(gt)
    pp, gp = np.argwhere(pb), np.argwhere(gb)
    if len(pp) == 0 or len(gp) == 0:
        return 1.0 if len(pp) == len(gp) else 0.0

    def share(a, b):
        return np.mean([((b - x) ** 2).sum(1).min() <= radius ** 2 for x in a])

    p, r = share(pp, gp), share(gp, pp)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_boundary_f_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(1)
    for radius in (0, 1, 2):
        for _ in range(8):
            gt = blob(rng, (12, 12))
            pred = blob(rng, (12, 12))
            assert mm.boundary_f(pred, gt, bound_th=radius) == pytest.approx(_naive_f(pred, gt, radius))


def blob(rng, shape):
    m = np.zeros(shape, bool)
    for _ in range(2):
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        h, w = rng.integers(1, 5, 2)
        m[r:r + h, c:c + w] = True
    return m


def test_video_f_and_j_and_f():
    pred = np.stack([GT8, SHIFT1])
    gt = np.stack([GT8, GT8])
    # J: frame 0 = 1; frame 1: 2 shared px (column 3, rows 3-4) of 4 + 4 - 2 = 6  ->  1/3.  J = 2/3
    # F at radius 0: frame 0 = 1, frame 1 = 0.5 (above)  ->  0.75.  J&F = (2/3 + 3/4) / 2 = 17/24
    out = mm.j_and_f(pred, gt, bound_th=0)
    assert out["J"] == pytest.approx(2 / 3)
    assert out["F"] == pytest.approx(0.75)
    assert out["J&F"] == pytest.approx(17 / 24)
    assert mm.video_f(pred, gt) == 1.0                  # default radius 1 on 8x8
    assert mm.j_and_f(GT8, GT8) == {"J": 1.0, "F": 1.0, "J&F": 1.0}


# ----------------------------------------------------------------------------------------- input checks

@pytest.mark.parametrize("fn", [mm.region_j, mm.boundary_f])
def test_frame_metrics_reject_bad_masks(fn):
    with pytest.raises(ValueError, match="shapes differ"):
        fn(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="0/1"):
        fn(np.full((4, 4), 2), GT4)
    with pytest.raises(ValueError, match="0/1"):
        fn(GT4, np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="dtype"):
        fn(np.full((4, 4), "a"), GT4)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        fn(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        fn(np.zeros(4, bool), np.zeros(4, bool))


def test_video_metrics_reject_bad_masks():
    with pytest.raises(ValueError, match="empty"):
        mm.video_j(np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        mm.j_and_f(np.zeros((2, 4, 4), bool), np.zeros((3, 4, 4), bool))
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        mm.video_f(np.zeros((1, 2, 4, 4), bool), np.zeros((1, 2, 4, 4), bool))


# ----------------------------------------------------------------------------------------- vIoU

def test_viou_partly_overlapping_spans():
    # pred span frames 0..4, GT span frames 2..6:  S_i = {2, 3, 4}, S_u = {0..6} = 7 frames.
    # IoU: frame 2 exact (1), frame 3 the hand-counted 2/8, frame 4 predicted empty (0).
    # vIoU = (1 + 1/4 + 0) / 7 = 5/28
    pred = {0: GT4, 1: GT4, 2: GT4, 3: PRED4, 4: EMPTY4}
    gt = {2: GT4, 3: GT4, 4: GT4, 5: GT4, 6: GT4}
    assert mm.viou(pred, gt, (0, 4), (2, 6)) == pytest.approx(5 / 28)
    # same spans, perfect masks: 3 / 7 -- the temporal miss alone costs 4/7
    assert mm.viou({t: GT4 for t in range(5)}, gt, (0, 4), (2, 6)) == pytest.approx(3 / 7)
    # a (T, H, W) array works as a tube too
    arr = np.stack([GT4, GT4, GT4, PRED4, EMPTY4])
    assert mm.viou(arr, gt, (0, 4), (2, 6)) == pytest.approx(5 / 28)


def test_viou_sampled_frames_and_edge_cases():
    pred = {0: GT4, 1: GT4, 2: GT4, 3: PRED4, 4: EMPTY4}
    gt = {2: GT4, 3: GT4, 4: GT4, 5: GT4, 6: GT4}
    # evaluated frames {0, 2, 4, 6}: S_p = {0, 2, 4}, S_g = {2, 4, 6}; S_i = {2, 4}, S_u has 4 frames
    # vIoU = (1 + 0) / 4
    assert mm.viou(pred, gt, (0, 4), (2, 6), frames=[0, 2, 4, 6]) == 0.25
    assert mm.viou(pred, gt, (0, 1), (5, 6)) == 0.0                     # disjoint spans
    assert mm.viou({3: GT4}, {3: GT4}, (3, 3), (3, 3)) == 1.0           # one-frame spans
    assert mm.viou({0: EMPTY4}, {0: EMPTY4}, (0, 0), (0, 0)) == 1.0     # both empty: J convention


def test_viou_boxes():
    # pred (0,0)-(2,2), GT (1,0)-(3,2): overlap 1 x 2 = 2, union 4 + 4 - 2 = 6  ->  1/3 on the one frame
    assert mm.viou({0: (0, 0, 2, 2)}, {0: (1, 0, 3, 2)}, (0, 0), (0, 0)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="x1 <= x2"):
        mm.viou({0: (2, 0, 0, 2)}, {0: (1, 0, 3, 2)}, (0, 0), (0, 0))
    with pytest.raises(ValueError, match="frame 0"):
        mm.viou({0: (0, 0, 2, 2)}, {0: GT4}, (0, 0), (0, 0))


def test_viou_rejects_bad_input():
    gt = {t: GT4 for t in range(2, 7)}
    with pytest.raises(ValueError, match="pred_tubes has no entry for frame 3"):
        mm.viou({2: GT4, 4: GT4}, gt, (2, 4), (2, 6))
    with pytest.raises(ValueError, match="start <= end"):
        mm.viou(gt, gt, (4, 2), (2, 6))
    with pytest.raises(ValueError, match="whole frame"):
        mm.viou(gt, gt, (2.5, 4), (2, 6))
    with pytest.raises(ValueError, match="pair"):
        mm.viou(gt, gt, (2, 3, 4), (2, 6))
    with pytest.raises(ValueError, match="either span"):
        mm.viou(gt, gt, (2, 3), (2, 3), frames=[10])
    with pytest.raises(ValueError, match="shapes differ"):
        mm.viou({2: GT4}, {2: np.zeros((5, 5), bool)}, (2, 2), (2, 2))


def test_viou_summary():
    # 4 videos: mean (0.2 + 0.3 + 0.5 + 1.0) / 4 = 0.5; >= 0.3: three of four; >= 0.5: two of four
    assert mm.viou_summary([0.2, 0.3, 0.5, 1.0]) == {"m_vIoU": 0.5, "vIoU@0.3": 0.75, "vIoU@0.5": 0.5}
    # an exact tie from viou itself: 3 perfect frames in a 10-frame union = 3/10 counts at 0.3
    v = mm.viou({t: GT4 for t in range(10)}, {t: GT4 for t in range(7, 10)}, (0, 9), (7, 9))
    assert mm.viou_summary([v])["vIoU@0.3"] == 1.0
    assert mm.viou_summary([0.4], thresholds=(0.25,)) == {"m_vIoU": 0.4, "vIoU@0.25": 1.0}
    with pytest.raises(ValueError, match="non-empty"):
        mm.viou_summary([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mm.viou_summary([0.5, 1.2])


# ----------------------------------------------------------------------------------------- GCG

# 1x5 masks (H = 1). Two GT phrases that overlap (a person and what they hold), two predicted masks.
#            pixel: 01234
GCG_A = grid(["####."])   # GT phrase A: px 0-3
GCG_B = grid(["...##"])   # GT phrase B: px 3-4
GCG_P = grid([".####"])   # pred p: px 1-4
GCG_Q = grid(["##..."])   # pred q: px 0-1
# IoU(p, A) = |{1,2,3}| / |{0..4}| = 3/5     IoU(p, B) = |{3,4}| / |{1..4}| = 2/4
# IoU(q, A) = |{0,1}| / |{0..3}| = 2/4       IoU(q, B) = 0


def test_mask_iou_matrix_hand_counted():
    iou = mm.mask_iou_matrix([GCG_P, GCG_Q], [GCG_A, GCG_B])
    assert iou.shape == (2, 2)
    np.testing.assert_array_equal(iou, [[0.6, 0.5], [0.5, 0.0]])


def test_gcg_greedy_and_hungarian_differ():
    # Greedy (GLaMM) takes p-A = 0.6 first; q-B is then 0, so B stays unpaired.
    #   mIoU = 0.6 / 2 GT = 0.3, mIoU_matched = 0.6 / 1 pair, recall = 1 / 2
    # Hungarian maximises the total: p-B + q-A = 0.5 + 0.5 = 1.0 > 0.6.
    #   mIoU = 1.0 / 2 = 0.5, mIoU_matched = 0.5, recall = 2 / 2 (0.5 >= 0.5 counts)
    greedy = mm.gcg_mask_scores([GCG_P, GCG_Q], [GCG_A, GCG_B], matching="greedy")
    assert greedy["pairs"] == [(0, 0, 0.6)]
    assert greedy["mIoU"] == pytest.approx(0.3)
    assert greedy["mIoU_matched"] == pytest.approx(0.6)
    assert greedy["recall"] == 0.5
    hung = mm.gcg_mask_scores([GCG_P, GCG_Q], [GCG_A, GCG_B])
    assert sorted(hung["pairs"]) == [(0, 1, 0.5), (1, 0, 0.5)]
    assert hung["mIoU"] == pytest.approx(0.5)
    assert hung["mIoU_matched"] == pytest.approx(0.5)
    assert hung["recall"] == 1.0
    assert (hung["n_gt"], hung["n_pred"], hung["n_hits"]) == (2, 2, 2)
    # at threshold 0.55 neither Hungarian pair (0.5) is a hit
    assert mm.gcg_mask_scores([GCG_P, GCG_Q], [GCG_A, GCG_B], iou_threshold=0.55)["recall"] == 0.0


def test_gcg_unmatched_gt_counts_zero_and_extra_preds_are_free():
    # one perfect mask for a 2-phrase caption: mIoU = 1 / 2 GT, the GLaMM denominator would say 1
    one = mm.gcg_mask_scores([GCG_A], [GCG_A, GCG_B])
    assert (one["mIoU"], one["mIoU_matched"], one["recall"]) == (0.5, 1.0, 0.5)
    # an extra (hallucinated) mask does not change mIoU or recall
    extra = mm.gcg_mask_scores([GCG_A, GCG_B, GCG_Q], [GCG_A, GCG_B])
    assert (extra["mIoU"], extra["recall"], extra["n_pred"]) == (1.0, 1.0, 3)
    # no predicted mask at all is a valid (bad) answer
    none = mm.gcg_mask_scores([], [GCG_A, GCG_B])
    assert (none["mIoU"], none["mIoU_matched"], none["recall"], none["pairs"]) == (0.0, 0.0, 0.0, [])


def test_gcg_hungarian_is_optimal_on_random_cases():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n_p, n_g = (int(n) for n in rng.integers(1, 5, 2))
        preds = rng.random((n_p, 4, 4)) < 0.5
        gts = rng.random((n_g, 4, 4)) < 0.5
        iou = mm.mask_iou_matrix(preds, gts)
        best = max(sum(iou[i, j] for i, j in zip(perm, range(n_g)) if i is not None)
                   for perm in itertools.permutations(list(range(n_p)) + [None] * n_g, n_g))
        got = mm.gcg_mask_scores(preds, gts)
        assert got["mIoU"] * n_g == pytest.approx(best)
        assert got["mIoU"] >= mm.gcg_mask_scores(preds, gts, matching="greedy")["mIoU"] - 1e-12


def test_gcg_rejects_bad_input():
    with pytest.raises(ValueError, match="gt_masks is empty"):
        mm.gcg_mask_scores([GCG_A], [])
    with pytest.raises(ValueError, match="mixes mask shapes"):
        mm.gcg_mask_scores([GCG_A], [GCG_A, np.zeros((2, 5), bool)])
    with pytest.raises(ValueError, match="shapes differ"):
        mm.gcg_mask_scores([np.zeros((2, 5), bool)], [GCG_A])
    with pytest.raises(ValueError, match="0/1"):
        mm.gcg_mask_scores([GCG_A * 3], [GCG_A])
    with pytest.raises(ValueError, match="matching"):
        mm.gcg_mask_scores([GCG_A], [GCG_A], matching="optimal")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mm.gcg_mask_scores(GCG_A, [GCG_A])
    assert math.isclose(mm.gcg_mask_scores(np.stack([GCG_A]), np.stack([GCG_A]))["mIoU"], 1.0)
