"""Tests of the synthetic video generator: determinism, exact masks, motion, exits, occlusion."""

import dataclasses
import hashlib
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vosjax.data.synthetic import generator

# Flat colours, hard edges, no noise and no lighting change: every pixel then shows exactly the
# colour of the object (or background) the mask gives it. Motion, rotation, scaling, warping and
# the camera keep their default strengths, so exactness is checked under all of them.
FLAT = generator.SyntheticConfig(
    object_textures=("flat",),
    background_textures=("flat",),
    edge_softness=0.0,
    noise_sigma=0.0,
    lighting_drift=0.0,
)
# One rigid object moving in a straight line at a known speed on a still camera.
RIGID = generator.SyntheticConfig(
    num_objects=(1, 1),
    object_radius=(0.2, 0.2),
    speed=(0.02, 0.02),
    wiggle=0.0,
    rotation_speed=0.0,
    scale_change=0.0,
    deformation=0.0,
    allow_exit=False,
    camera_pan=0.0,
    camera_zoom=0.0,
    lighting_drift=0.0,
    noise_sigma=0.0,
)


def _digest(video: generator.SyntheticVideo) -> str:
    return hashlib.sha256(video.frames.tobytes() + video.masks.tobytes()).hexdigest()


def _colours(scene) -> dict[int, np.ndarray]:
    """Object id (0: background) -> its flat colour, for scenes drawn with FLAT."""
    colours = {o.object_id: o.texture[0, 0] for o in scene.objects}
    colours[0] = scene.background[0, 0]
    return colours


def _coverage(scene, obj, t: int) -> np.ndarray:
    """Full-frame boolean coverage (alpha >= 0.5) of one object at frame t."""
    full = np.zeros((scene.height, scene.width), bool)
    layer = generator.scene_lib.object_layer(
        obj, t, scene.height, scene.width, scene.edge_softness, False
    )
    if layer is not None:
        window, alpha, _ = layer
        full[window] = alpha >= 0.5
    return full


def test_same_seed_same_bytes_different_seed_differs():
    a = generator.generate_video(7, num_frames=4, height=40, width=48)
    b = generator.generate_video(7, num_frames=4, height=40, width=48)
    c = generator.generate_video(8, num_frames=4, height=40, width=48)
    assert _digest(a) == _digest(b)
    assert not np.array_equal(a.frames, c.frames)


def test_same_bytes_in_another_process():
    code = (
        "import hashlib; from vosjax.data.synthetic import generator as g; "
        "v = g.generate_video(11, num_frames=3, height=33, width=47, config=g.HARD); "
        "print(hashlib.sha256(v.frames.tobytes() + v.masks.tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = generator.generate_video(11, num_frames=3, height=33, width=47, config=generator.HARD)
    assert out.stdout.strip() == _digest(here)


def test_a_shorter_video_is_a_prefix_of_a_longer_one():
    short = generator.generate_video(3, num_frames=3, height=32, width=40)
    long = generator.generate_video(3, num_frames=6, height=32, width=40)
    np.testing.assert_array_equal(short.frames, long.frames[:3])
    np.testing.assert_array_equal(short.masks, long.masks[:3])


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_shapes_and_dtypes_for_odd_sizes(level):
    video = generator.generate_video(
        5, num_frames=3, height=37, width=53, config=generator.level_config(level)
    )
    k = video.num_objects
    assert video.frames.shape == (3, 37, 53, 3) and video.frames.dtype == np.uint8
    assert video.masks.shape == (3, 37, 53) and video.masks.dtype == np.uint8
    assert video.centers.shape == (3, k, 2)
    assert 1 <= k <= 5
    assert sorted(video.depth_order) == list(range(1, k + 1))
    assert set(np.unique(video.masks).tolist()) <= set(range(k + 1))


@pytest.mark.parametrize("seed", range(4))
def test_mask_is_exactly_where_each_flat_colour_is_drawn(seed):
    scene = generator.sample_scene(seed, height=48, width=64, config=FLAT)
    video = generator.render_scene(scene, 6)
    colours = _colours(scene)
    assert len({tuple(c) for c in colours.values()}) == len(colours)  # distinguishable
    for object_id, colour in colours.items():
        drawn = (video.frames == colour.astype(np.uint8)).all(axis=-1)
        np.testing.assert_array_equal(video.masks == object_id, drawn, err_msg=f"id {object_id}")
    assert (video.masks[0] > 0).any()


def test_soft_edges_mask_is_coverage_at_one_half():
    config = dataclasses.replace(FLAT, num_objects=(1, 1), edge_softness=3.0)
    scene = generator.sample_scene(1, height=48, width=48, config=config)
    video = generator.render_scene(scene, 3)
    colours = _colours(scene)
    frames = video.frames.astype(np.float64)
    to_object = np.linalg.norm(frames - colours[1], axis=-1)
    to_background = np.linalg.norm(frames - colours[0], axis=-1)
    inside = video.masks == 1
    # A pixel at coverage a shows a * object + (1 - a) * background (rounded to integers): it is
    # nearer the object's colour exactly when a >= 0.5.
    assert (to_object[inside] <= to_background[inside] + 1.0).all()
    assert (to_background[~inside] <= to_object[~inside] + 1.0).all()
    blended = (to_object > 1) & (to_background > 1)
    assert blended.sum() > 10  # the edges really are anti-aliased


@pytest.mark.parametrize("seed", range(3))
def test_mask_centroid_moves_at_the_configured_speed(seed):
    size = 96
    video = generator.generate_video(seed, num_frames=12, height=size, width=size, config=RIGID)
    speed = RIGID.speed[0] * size  # pixels per frame
    ys, xs = np.mgrid[:size, :size]
    centroids = np.array([[ys[m].mean(), xs[m].mean()] for m in video.masks == 1])
    step = np.diff(centroids, axis=0)
    center_step = np.diff(video.centers[:, 0], axis=0)
    straight = np.abs(np.linalg.norm(center_step, axis=1) - speed) < 1e-3  # not bouncing
    assert straight.sum() >= 8
    np.testing.assert_allclose(np.linalg.norm(step[straight], axis=1), speed, atol=0.25)
    np.testing.assert_allclose(step[straight], center_step[straight], atol=0.25)


def _rotation(angle: float) -> np.ndarray:
    """Frame offset (y, x) -> canonical axes, as the renderer rotates (before scaling)."""
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


@pytest.mark.parametrize("seed", range(3))
def test_texture_moves_rigidly_with_the_object(seed):
    config = dataclasses.replace(
        RIGID,
        object_radius=(0.25, 0.25),
        rotation_speed=0.1,
        background_textures=("flat",),
        edge_softness=0.0,
    )
    size = 96
    scene = generator.sample_scene(seed, height=size, width=size, config=config)
    video = generator.render_scene(scene, 4)
    obj = scene.objects[0]
    ys, xs = np.mgrid[:size, :size].astype(np.float64)
    for t in range(3):
        # Where each pixel of frame t + 1 was in frame t, under the object's own rigid motion.
        before, after = obj.center(t), obj.center(t + 1)
        motion = np.linalg.inv(_rotation(obj.angle + obj.spin * t)) @ _rotation(
            obj.angle + obj.spin * (t + 1)
        )
        source = before + np.stack([ys - after[0], xs - after[1]], -1) @ motion.T
        warped = cv2.remap(
            video.frames[t].astype(np.float32),
            source[..., 1].astype(np.float32),
            source[..., 0].astype(np.float32),
            cv2.INTER_LINEAR,
        )
        inner = cv2.erode((video.masks[t + 1] == 1).astype(np.uint8), np.ones((5, 5), np.uint8))
        inner = inner > 0
        error = np.abs(warped[inner] - video.frames[t + 1][inner]).mean()
        texture_spread = video.frames[t + 1][inner].std()
        assert texture_spread > 20  # a real texture, not a flat colour
        assert error < min(2.5, 0.05 * texture_spread)


@pytest.mark.parametrize("level", ["medium", "hard"])
def test_frame_zero_shows_every_object(level):
    config = generator.level_config(level)
    height, width = 48, 64
    min_pixels = round(config.min_visible_area * height * width)
    for seed in range(20):
        video = generator.generate_video(
            seed, num_frames=1, height=height, width=width, config=config
        )
        areas = np.bincount(video.masks[0].ravel(), minlength=video.num_objects + 1)
        assert len(areas) == video.num_objects + 1
        assert areas[1:].min() >= max(min_pixels, 1), (seed, areas)


def test_objects_leave_and_come_back_only_with_allow_exit():
    size = 64
    config = dataclasses.replace(RIGID, object_radius=(0.1, 0.1), speed=(0.1, 0.1), allow_exit=True)
    # Per axis the path bounces between walls about 100 px apart at >= 4.5 px per frame, so it
    # leaves the frame and comes back within 60 frames.
    for seed in range(3):
        video = generator.generate_video(
            seed, num_frames=60, height=size, width=size, config=config
        )
        areas = (video.masks == 1).sum(axis=(1, 2))
        assert areas[0] > 0
        gone = np.flatnonzero(areas == 0)
        assert gone.size > 0, f"seed {seed}: the object never left"
        assert (areas[gone[0] :] > 0).any(), f"seed {seed}: the object never came back"
        inside = dataclasses.replace(config, allow_exit=False)
        kept = generator.generate_video(seed, num_frames=60, height=size, width=size, config=inside)
        assert (kept.masks == 1).sum(axis=(1, 2)).min() > 0


def test_front_object_wins_where_objects_overlap():
    config = dataclasses.replace(FLAT, num_objects=(3, 3), object_radius=(0.3, 0.35))
    overlaps = 0
    for seed in range(3):
        scene = generator.sample_scene(seed, height=48, width=48, config=config)
        video = generator.render_scene(scene, 4)
        colours = _colours(scene)
        for t in range(4):
            covers = [_coverage(scene, obj, t) for obj in scene.objects]  # back to front
            expected = np.zeros((48, 48), np.uint8)
            for obj, cover in zip(scene.objects, covers, strict=True):
                expected[cover] = obj.object_id
            np.testing.assert_array_equal(video.masks[t], expected)
            for back in range(len(covers)):
                for front in range(back + 1, len(covers)):
                    both = covers[back] & covers[front]
                    overlaps += int(both.sum())
                    front_id = scene.objects[front].object_id
                    assert (video.masks[t][both] != scene.objects[back].object_id).all()
                    visible = both & (video.masks[t] == front_id)
                    assert (video.frames[t][visible] == colours[front_id]).all()
    assert overlaps > 100  # the test did see occlusions


def test_pixel_noise_has_the_configured_sigma():
    config = dataclasses.replace(FLAT, noise_sigma=6.0)
    scene = generator.sample_scene(2, height=96, width=96, config=config)
    clean, _ = generator.scene_lib.render_frame(scene, 0, None)
    noisy, _ = generator.scene_lib.render_frame(scene, 0, np.random.default_rng(0))
    diff = noisy.astype(np.float64) - clean
    assert abs(diff.mean()) < 0.2
    # Rounding both frames adds about 1/12 to the variance.
    assert diff.std() == pytest.approx(math.sqrt(36 + 1 / 12), rel=0.05)


def test_lighting_drift_follows_gain_and_bias():
    config = dataclasses.replace(FLAT, lighting_drift=0.2)
    scene = generator.sample_scene(4, height=32, width=32, config=config)
    video = generator.render_scene(scene, 40)
    background = scene.background[0, 0].astype(np.float64)
    means = []
    for t in range(0, 40, 13):
        gain = math.exp(float(scene.log_gain(t)))
        want = np.clip(np.rint((background - 128) * gain + 128 + float(scene.bias(t))), 0, 255)
        got = video.frames[t][video.masks[t] == 0]
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=1)
        means.append(want.mean())
    assert np.ptp(means) > 5  # the lighting really drifts


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="num_objects"):
        generator.SyntheticConfig(num_objects=(3, 2))
    with pytest.raises(ValueError, match="object_textures"):
        generator.SyntheticConfig(object_textures=("plaid",))
    with pytest.raises(ValueError, match="deformation"):
        generator.SyntheticConfig(deformation=0.9)
    with pytest.raises(ValueError, match="bogus"):
        generator.level_config("bogus")
    with pytest.raises(ValueError, match="seed"):
        generator.generate_video(-1, num_frames=2, height=16, width=16)
    with pytest.raises(ValueError, match="height"):
        generator.generate_video(0, num_frames=2, height=4, width=16)
    with pytest.raises(ValueError, match="num_frames"):
        generator.generate_video(0, num_frames=0, height=16, width=16)


def test_split_seeds_are_stable_and_distinct():
    seeds = {
        generator.split_seed(0, split, i) for split in ("train", "validation") for i in range(50)
    }
    assert len(seeds) == 100
    assert generator.split_seed(0, "train", 3) == generator.split_seed(0, "train", 3)
    assert generator.split_seed(0, "train", 3) != generator.split_seed(1, "train", 3)
