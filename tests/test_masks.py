"""d2lib.world.masks: exact object masks agree with the renderer and the decoded frames; packing and the cache."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from d2lib.world import masks as M
from d2lib.world import video
from d2lib.world.synth import (BACKGROUND, EventSpec, ObjectSpec, VideoSpec, WorldConfig, render_frames, sample_video,
                         track)

CFG = WorldConfig()  # params.yaml's world: 4 fps, 64 px, noise 2
CLEAN = dataclasses.replace(CFG, noise=0.0)
VAL = Path(__file__).resolve().parents[1] / "data" / "shapes" / "val"
BG = np.asarray(BACKGROUND, np.float64)


def all_times(spec, cfg=CFG):
    return np.arange(spec.duration * cfg.render_fps) / cfg.render_fps


def colour_share(frames, spec, times):
    """``(n_objects, T, H, W)``: each pixel's colour projected on the line background -> object colour
    (at that time: colour changes interpolate), 0 = background, 1 = the object's colour. For a pixel
    blended from one object and the background this *is* the object's weight w."""
    out = []
    for o in spec.objects:
        d = track(spec, o.id, times)["rgb"] - BG  # (T, 3)
        out.append(((frames.astype(np.float64) - BG) * d[:, None, None, :]).sum(-1) / (d ** 2).sum(-1)[:, None, None])
    return np.stack(out)


def in_out_rates(share, masks, tol):
    """Share of mask pixels whose colour is at least (0.5 - tol) the object's, and share of (object,
    unmasked pixel) pairs below 0.5 + tol."""
    inside = np.concatenate([share[k][masks[k]] for k in range(len(masks))])
    outside = share[:, ~masks.any(0)].ravel()
    return float((inside >= 0.5 - tol).mean()), float((outside < 0.5 + tol).mean())


def val_specs():
    if not (VAL / "meta.json").is_file():
        pytest.skip("data/shapes is not checked out (make data)")
    return {m["video"]: VideoSpec.from_meta(m) for m in json.loads((VAL / "meta.json").read_text())}


@pytest.fixture(scope="module")
def spec():
    """A fixed world video (seed 9: 36 s, 3 objects; fades in and out, three moves)."""
    return sample_video(9, CFG)


# ----------------------------------------------------------------------------------------- agreement

def test_weights_reproduce_the_render_exactly(spec):
    """The weights are the renderer's own blend: sum_i w_i rgb_i + (1 - sum w) background is the
    noise-free frame up to the final rounding to uint8 (<= 0.5) and float32 error."""
    t = all_times(spec)
    w = M.object_weights(spec, CFG, t, CFG.render_size).astype(np.float64)
    rgb = np.stack([track(spec, o.id, t)["rgb"] for o in spec.objects])
    recon = np.einsum("knhw,knc->nhwc", w, rgb) + (1 - w.sum(0))[..., None] * BG
    assert np.abs(recon - render_frames(spec, CLEAN)).max() <= 0.5 + 1e-3


def test_masks_agree_with_rendered_colours(spec):
    """At render size, against the frames render_frames draws (noise included).

    Tolerance: the noise has std 2 (0-255 scale); projected on (colour - background), whose length is
    >= 167 for every palette colour, it moves a pixel's share by ~0.012, so 0.05 is 4 std. Inside a mask
    (practically) every pixel must reach 0.45; outside all masks 99.9% of (object, pixel) pairs stay below 0.55 — the
    rest are pixels of one colour that project onto another object's colour direction (yellow
    (235, 210, 40) projects onto red at 1.17x, so a 45%-yellow edge pixel reads as 52% red)."""
    t = all_times(spec)
    masks = M.object_masks(spec, CFG, t, CFG.render_size)
    share = colour_share(render_frames(spec, CFG), spec, t)
    inside, outside = in_out_rates(share, masks, tol=0.05)
    assert inside >= 0.9995  # measured: 1.0 for every val video
    assert outside >= 0.999
    # and the rule is not vacuous: edge pixels a pixel shift away fail it
    shifted = np.roll(masks, 1, axis=-1)
    assert in_out_rates(share, shifted, tol=0.05)[0] < 0.97


def test_masks_agree_with_resized_frames(spec):
    """At the decode size (32 px) the masks match the rendered frames the sampler picks, resized by
    video.resize_frames — the decoded frames without the codec. The filter averages the noise away
    (std ~0.006 in share), so the render-size tolerance holds with room to spare."""
    masks, times = M.video_masks(spec, CFG, fps=1.0, size=32)
    idx = video.sample_indices(spec.duration * CFG.render_fps, CFG.render_fps, 1.0)
    assert len(times) == len(idx) == spec.duration  # decoded frame k = second k
    frames = video.resize_frames(render_frames(spec, CFG)[idx], 32)
    inside, outside = in_out_rates(colour_share(frames, spec, times), masks, tol=0.05)
    assert inside >= 0.9995 and outside >= 0.999


def test_masks_line_up_with_the_decoded_mp4():
    """The decoded frames the model sees (data/shapes/val, H.264 at crf 23, decoded at 1 fps, 32 px).

    Tolerance 0.15: the codec stores chroma at half resolution and quantises, smearing an edge pixel's
    colour by ~0.1 of the colour difference; measured over the val split every mask pixel still reaches
    0.4. The same masks one frame (1 s) early or late fail on a moving object."""
    specs = val_specs()
    name = "videos/val_00000.mp4"  # two objects that move and grow
    spec = specs[name]
    frames = video.read_frames(VAL / name, fps=1.0, size=32)
    masks, times = M.video_masks(spec, CFG, fps=1.0, size=32, video=name)
    assert masks.shape == (len(spec.objects), len(frames), 32, 32)
    share = colour_share(frames, spec, times)
    inside, outside = in_out_rates(share, masks, tol=0.15)
    assert inside >= 0.999 and outside >= 0.999
    for shift in (-1, 1):
        off = np.roll(masks, shift, axis=1)[:, 1:-1]
        assert in_out_rates(share[:, 1:-1], off, tol=0.15)[0] < inside - 0.02


def test_occlusion_gives_visible_pixels_only():
    """A red square under a blue circle (drawn later): the square's mask loses the covered pixels, the
    masks never overlap, and those pixels are blue in the render. While the circle is still fading in
    (alpha 0.25 < 0.5) it owns no pixel and the square keeps them."""
    spec = VideoSpec(8, (ObjectSpec(0, "square", "red", 0.45, 0.5, 0.15),
                         ObjectSpec(1, "circle", "blue", 0.58, 0.5, 0.12)),
                     (EventSpec("appear", 1, 0, 4, "the blue circle appears"),))
    t = np.array([1.0, 5.0])  # circle alpha 0.25, then 1
    m = M.object_masks(spec, CLEAN, t, 64)
    solo = M.object_masks(dataclasses.replace(spec, objects=spec.objects[:1], events=()), CLEAN, t, 64)[0]
    assert not (m[0] & m[1]).any()
    assert (m[0, 0] == solo[0]).all() and not m[1, 0].any()  # faint circle: the square keeps everything
    covered = solo[1] & m[1, 1]
    assert covered.sum() > 50 and not m[0, 1][covered].any()  # opaque circle hides the square there
    frame = render_frames(spec, CLEAN)[5 * CLEAN.render_fps].astype(float)
    blue, red = np.array((50, 100, 235)), np.array((220, 50, 50))
    assert (np.linalg.norm(frame[covered] - blue, axis=-1) < np.linalg.norm(frame[covered] - red, axis=-1)).all()
    sq = m[0, 1]
    inner = sq & np.roll(sq, 1, 0) & np.roll(sq, -1, 0) & np.roll(sq, 1, 1) & np.roll(sq, -1, 1)
    assert inner.sum() > 50
    assert (frame[inner] == red).all()


def test_invisible_object_has_an_empty_mask():
    """Before its appear event and after its disappear event an object is not drawn (alpha 0)."""
    spec = VideoSpec(20, (ObjectSpec(0, "triangle", "green", 0.5, 0.5, 0.12, 30.0),),
                     (EventSpec("appear", 0, 3, 6, "the green triangle appears"),
                      EventSpec("disappear", 0, 12, 16, "the green triangle disappears")))
    m = M.object_masks(spec, CFG, np.arange(20.0), 32)[0]
    area = m.sum(axis=(1, 2))
    assert (area[:4] == 0).all() and (area[16:] == 0).all()  # alpha 0 through t = start / from t = end
    assert (area[6:12] > 0).all()
    frames = render_frames(spec, CLEAN)
    assert (frames[: 3 * CFG.render_fps + 1] == BACKGROUND).all()  # the renderer agrees: nothing drawn


def test_invisible_frames_in_the_benchmark_are_empty():
    """Every object of every val video: empty at the frames where its alpha is 0."""
    for name, spec in val_specs().items():
        masks, times = M.video_masks(spec, CFG, video=name)
        for k, o in enumerate(spec.objects):
            gone = track(spec, o.id, times)["alpha"] == 0
            assert not masks[k][gone].any(), (name, o.id)


# ----------------------------------------------------------------------------------------- frames

def test_times_map_to_the_frames_the_sampler_decodes(spec):
    for fps in (1.0, 2.0, 3.0, 4.0):
        masks, times = M.video_masks(spec, CFG, fps=fps, size=16)
        assert np.array_equal(times, M.decoded_frame_times(spec.duration, CFG, fps))
        idx = video.sample_indices(spec.duration * CFG.render_fps, CFG.render_fps, fps)
        assert np.array_equal(M.render_indices(spec, CFG, times), idx)
        assert np.array_equal(M.object_masks(spec, CFG, times, 16), masks)


def test_object_subset_and_order(spec):
    t = [0.0, 7.0]
    full = M.object_masks(spec, CFG, t, 32)
    ids = [o.id for o in spec.objects][::-1]
    assert np.array_equal(M.object_masks(spec, CFG, t, 32, objects=ids), full[::-1])


# ----------------------------------------------------------------------------------------- errors

def test_errors_name_the_video_and_object(spec):
    with pytest.raises(ValueError, match=r"videos/x\.mp4: no object with id 9"):
        M.object_masks(spec, CFG, [0], 32, objects=[9], video="videos/x.mp4")
    with pytest.raises(ValueError, match="no object with id True"):
        M.object_masks(spec, CFG, [0], 32, objects=[True])
    for t in (-0.5, spec.duration, spec.duration - 0.1, float("nan")):
        with pytest.raises(ValueError, match=r"videos/x\.mp4: time .* is outside the video"):
            M.object_masks(spec, CFG, [0, t], 32, video="videos/x.mp4")
    M.object_masks(spec, CFG, [spec.duration - 0.2], 32)  # nearest frame = the last one: fine
    for size in (7, 0, 16.0, None):
        with pytest.raises(ValueError, match=r"video with seed 9: mask size must be an integer >= 8"):
            M.object_masks(spec, CFG, [0], size)
    with pytest.raises(ValueError, match="1-D"):
        M.object_masks(spec, CFG, [[0, 1]], 32)


# ----------------------------------------------------------------------------------------- storage

@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (3, 5, 9, 9), (2, 7, 13, 13), (0, 4, 8, 8)])
def test_pack_unpack_round_trip(shape):
    m = np.random.default_rng(0).random(shape) < 0.3
    p = M.pack_masks(m)
    assert p.dtype == np.uint8 and p.shape == ((m.size + 7) // 8,)
    assert np.array_equal(M.unpack_masks(p, shape), m)
    assert np.array_equal(M.pack_masks(m.astype(np.uint8)), p)


def test_pack_unpack_errors():
    with pytest.raises(ValueError, match="boolean"):
        M.pack_masks(np.array([0, 2]))
    p = M.pack_masks(np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"uint8 of shape \(2,\)"):
        M.unpack_masks(p[:1], (3, 3))
    with pytest.raises(ValueError, match="uint8"):
        M.unpack_masks(p.astype(np.int16), (3, 3))


def test_cache_is_byte_identical_and_round_trips(tmp_path, spec):
    specs = {"videos/a.mp4": spec, "videos/b.mp4": sample_video(6, CFG)}
    a = M.build_mask_cache(tmp_path / "one" / "masks.npz", specs, CFG, fps=1.0, size=32)
    b = M.build_mask_cache(tmp_path / "two" / "masks.npz", dict(reversed(specs.items())), CFG, fps=1.0, size=32)
    assert a.read_bytes() == b.read_bytes()  # same masks -> same bytes (insertion order does not matter)
    assert sorted(p.name for p in a.parent.iterdir()) == ["masks.npz"]  # no temp file left behind
    got = M.read_mask_cache(a)
    assert got.meta == {"fps": 1.0, "size": 32, "render_fps": 4, "render_size": 64}
    assert set(got.masks) == set(specs)
    for v, s in specs.items():
        want, times = M.video_masks(s, CFG, 1.0, 32)
        assert got.masks[v].dtype == bool and np.array_equal(got.masks[v], want)
        assert np.array_equal(got.times[v], times)
    M.build_mask_cache(a, {"videos/a.mp4": spec}, CFG)  # overwrite in place
    assert set(M.read_mask_cache(a).masks) == {"videos/a.mp4"}


def test_cache_errors(tmp_path):
    m = np.zeros((1, 2, 8, 8), bool)
    with pytest.raises(ValueError, match="n_objects, T, S, S"):
        M.write_mask_cache(tmp_path / "x.npz", {"v": m[0]})
    with pytest.raises(ValueError, match="2 mask frames"):
        M.write_mask_cache(tmp_path / "x.npz", {"v": m}, times={"v": [0.0]})
    with pytest.raises(ValueError, match="bad video key"):
        M.write_mask_cache(tmp_path / "x.npz", {"a::b": m})
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="not found"):
        M.read_mask_cache(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz: not a readable mask cache"):
        M.read_mask_cache(bad)
