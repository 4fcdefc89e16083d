"""Tests of the clip augmentations: each transform against a known answer."""

import math

import numpy as np
import pytest

from vosjax.data import transforms, transforms_multicrop


def _clip(t: int = 3, h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _position_clip(t: int = 2, h: int = 48, w: int = 64) -> np.ndarray:
    """Channel 0 = row, channel 1 = column, channel 2 = frame index: every pixel is unique."""
    ys, xs = np.mgrid[:h, :w]
    frames = [np.stack([ys, xs, np.full_like(ys, i)], -1) for i in range(t)]
    return np.stack(frames).astype(np.uint8)


def test_random_resized_crop_area_and_ratio_within_ranges():
    crop = transforms.RandomResizedCrop(32, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    rng = np.random.default_rng(1)
    height, width = 200, 300
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = crop.sample_box(height, width, rng)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        areas.append(h * w / (height * width))
        ratios.append(w / h)
    # Rounding the side lengths moves the area / ratio by at most ~1 pixel's worth.
    assert 0.2 - 0.01 <= min(areas) and max(areas) <= 0.6 + 0.01
    assert 0.5 * 0.97 <= min(ratios) and max(ratios) <= 2.0 * 1.03
    # Uniform area: the mean is the middle of the range.
    assert np.mean(areas) == pytest.approx(0.4, abs=0.02)


def test_random_resized_crop_full_box_is_identity_and_shared_by_frames():
    clip = _clip(h=32, w=32)
    same = transforms.RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(same(clip, np.random.default_rng(0)), clip)

    frames = np.repeat(_clip(t=1), 4, axis=0)  # 4 identical frames
    out = transforms.RandomResizedCrop((16, 24), scale=(0.1, 0.3))(frames, np.random.default_rng(0))
    assert out.shape == (4, 16, 24, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[0], o) for o in out[1:])  # one box for the clip
    per = transforms.RandomResizedCrop(16, scale=(0.1, 0.3), per_frame=True)
    out = per(frames, np.random.default_rng(0))
    assert not all(np.array_equal(out[0], o) for o in out[1:])


def test_random_resized_crop_falls_back_to_centre_crop():
    # A 10 x 100 frame cannot hold a box of ratio <= 2 with area >= 90%: centre crop of ratio 2.
    crop = transforms.RandomResizedCrop(8, scale=(0.9, 1.0), ratio=(1.0, 2.0))
    assert crop.sample_box(10, 100, np.random.default_rng(0)) == (0, 40, 10, 20)


def test_short_side_resize():
    clip = _clip(h=60, w=90)
    out = transforms.ShortSideResize(30, 30)(clip, np.random.default_rng(0))
    assert out.shape == (3, 30, 45, 3)
    rng = np.random.default_rng(0)
    shorts = {transforms.ShortSideResize(20, 24)(clip[:1], rng).shape[1] for _ in range(60)}
    assert shorts == {20, 21, 22, 23, 24}
    tall = transforms.ShortSideResize(10, 10)(_clip(h=50, w=20), rng)
    assert tall.shape[1:3] == (25, 10)


def test_random_crop_takes_the_same_window_of_every_frame():
    clip = _position_clip()
    out = transforms.RandomCrop((20, 30))(clip, np.random.default_rng(3))
    assert out.shape == (2, 20, 30, 3)
    top, left = int(out[0, 0, 0, 0]), int(out[0, 0, 0, 1])
    np.testing.assert_array_equal(out, clip[:, top : top + 20, left : left + 30])
    small = transforms.RandomCrop(8)(np.full((1, 4, 6, 3), 7, np.uint8), np.random.default_rng(0))
    assert small.shape == (1, 8, 8, 3) and small.sum() == 7 * 4 * 6 * 3  # zero padding


def test_horizontal_flip():
    clip = _clip()
    rng = np.random.default_rng(0)
    flip = transforms.HorizontalFlip(p=1.0)
    np.testing.assert_array_equal(flip(clip, rng), clip[:, :, ::-1])
    np.testing.assert_array_equal(flip(flip(clip, rng), rng), clip)
    np.testing.assert_array_equal(transforms.HorizontalFlip(p=0.0)(clip, rng), clip)
    mixed = transforms.HorizontalFlip(p=0.5, per_frame=True)(_clip(t=40), np.random.default_rng(1))
    flipped = [np.array_equal(m, c[:, ::-1]) for m, c in zip(mixed, _clip(t=40), strict=True)]
    assert 5 < sum(flipped) < 35


def test_colour_jitter_zero_strength_is_identity():
    clip = _clip()
    jitter = transforms.ColourJitter(0, 0, 0, 0, p=1.0)
    np.testing.assert_array_equal(jitter(clip, np.random.default_rng(0)), clip)


def test_colour_jitter_brightness_scales_and_saturation_keeps_luma():
    clip = np.random.default_rng(0).uniform(0.1, 0.5, (2, 8, 8, 3)).astype(np.float32)
    out = transforms.ColourJitter(0.5, 0, 0, 0, p=1.0)(clip, np.random.default_rng(1))
    factor = out / clip
    assert np.allclose(factor, factor.flat[0], atol=1e-5) and 0.5 <= factor.flat[0] <= 1.5
    assert not np.isclose(factor.flat[0], 1.0)

    out = transforms.ColourJitter(0, 0, 0.9, 0, p=1.0)(clip, np.random.default_rng(2))
    assert not np.allclose(out, clip)
    inside = ((out > 0) & (out < 1)).all(axis=-1)  # pixels the [0, 1] clipping did not touch
    assert inside.mean() > 0.8
    np.testing.assert_allclose(
        transforms._luma(out)[inside], transforms._luma(clip)[inside], atol=1e-5
    )


def test_colour_jitter_hue_shift_moves_red_towards_green_or_blue():
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 1.0
    out = transforms.ColourJitter(0, 0, 0, 0.5, p=1.0)(red, np.random.default_rng(4))
    assert out.max() == pytest.approx(1.0, abs=1e-5)  # value and saturation kept
    assert not np.allclose(out, red)


def test_grayscale():
    clip = _clip()
    gray = transforms.Grayscale(p=1.0)(clip, np.random.default_rng(0))
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    expected = clip.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114])
    assert np.abs(gray[..., 0] - expected).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(transforms.Grayscale(p=0.0)(clip, np.random.default_rng(0)), clip)


def test_gaussian_blur_keeps_constant_images_and_the_mean():
    constant = np.full((2, 20, 30, 3), 123, np.uint8)
    blur = transforms.GaussianBlur(sigma=(1.0, 2.0), p=1.0)
    np.testing.assert_array_equal(blur(constant, np.random.default_rng(0)), constant)
    noise = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    out = blur(noise, np.random.default_rng(0))
    assert out.mean() == pytest.approx(noise.mean(), abs=5e-3)
    assert out.std() < 0.5 * noise.std()  # sigma >= 1 removes most white noise
    off = transforms.GaussianBlur(p=0.0)(noise, np.random.default_rng(0))
    np.testing.assert_array_equal(off, noise)


def test_normalize():
    clip = np.zeros((1, 1, 2, 3), np.uint8)
    clip[0, 0, 1] = 255
    out = transforms.Normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))(clip)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [[-1, -1, 0], [1, 3, 1]])


def test_random_affine_params_map_output_pixels_to_input_pixels():
    clip = _position_clip(t=2, h=48, w=64)
    affine = transforms.RandomAffine(
        scale=(0.7, 1.4), rotation=(-40, 40), translation=(0.2, 0.2), flip=0.5,
        size=(40, 50), interpolation="nearest",
    )  # fmt: skip
    for seed in range(5):
        out = affine(clip, np.random.default_rng(seed))
        matrix = out["params"]["affine"]
        assert out["clip"].shape == (2, 40, 50, 3) and matrix.shape == (2, 2, 3)
        np.testing.assert_array_equal(matrix[0], matrix[1])  # one draw for the clip
        ys, xs = np.mgrid[:40, :50]
        src = np.einsum("ij,jhw->ihw", matrix[0].astype(np.float64), np.stack([xs, ys, 1 + 0 * xs]))
        # Pixels that map inside the input, away from a rounding tie.
        ok = (src[0] > 0.6) & (src[0] < 62.4) & (src[1] > 0.6) & (src[1] < 46.4)
        ok &= np.abs(src - np.round(src) - 0.5).min(axis=0) > 0.5 - 0.45
        assert ok.sum() > 200
        got = out["clip"][0][ok]
        np.testing.assert_array_equal(got[:, 0], np.round(src[1][ok]))  # row
        np.testing.assert_array_equal(got[:, 1], np.round(src[0][ok]))  # column


def test_random_affine_identity_and_flip():
    clip = _clip(h=30, w=40)
    still = transforms.RandomAffine(scale=(1, 1), rotation=(0, 0), translation=(0, 0), flip=0)
    out = still(clip, np.random.default_rng(0))
    np.testing.assert_array_equal(out["clip"], clip)
    np.testing.assert_allclose(out["params"]["affine"][0], [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    mirror = transforms.RandomAffine(scale=(1, 1), rotation=(0, 0), translation=(0, 0), flip=1)
    out = mirror(clip, np.random.default_rng(0))
    np.testing.assert_array_equal(out["clip"], clip[:, :, ::-1])
    np.testing.assert_allclose(out["params"]["affine"][0], [[-1, 0, 39], [0, 1, 0]], atol=1e-5)


def test_random_affine_rotation_is_counter_clockwise_on_screen():
    turn = transforms.RandomAffine(scale=(1, 1), rotation=(90, 90), translation=(0, 0), flip=0)
    matrix = turn(_clip(t=1, h=21, w=21), np.random.default_rng(0))["params"]["affine"][0]
    # Counter-clockwise by 90 degrees: the input's right-middle pixel (20, 10) goes to the top
    # middle (10, 0) of the output.
    np.testing.assert_allclose(matrix @ [10, 0, 1], [20, 10], atol=1e-5)


def test_compose_and_per_frame_affine():
    chain = transforms.Compose(
        (transforms.HorizontalFlip(1.0), transforms.HorizontalFlip(1.0), transforms.Normalize())
    )
    clip = _clip()
    np.testing.assert_allclose(chain(clip, np.random.default_rng(0)), transforms.Normalize()(clip))
    per = transforms.RandomAffine(per_frame=True)(clip, np.random.default_rng(0))
    assert not np.allclose(per["params"]["affine"][0], per["params"]["affine"][1])


def test_multicrop_shapes_boxes_and_plain_crops():
    clip = _clip(t=2, h=80, w=100)
    crops = transforms_multicrop.MultiCrop(global_size=32, local_size=16, num_local=3)(
        clip, np.random.default_rng(0)
    )
    assert crops["global"].shape == (2, 1, 32, 32, 3) and crops["global"].dtype == np.float32
    assert crops["local"].shape == (2, 3, 16, 16, 3)
    area = crops["local_boxes"][..., 2] * crops["local_boxes"][..., 3] / (80 * 100)
    assert area.min() >= 0.05 - 0.01 and area.max() <= 0.4 + 0.01
    area = crops["global_boxes"][..., 2] * crops["global_boxes"][..., 3] / (80 * 100)
    assert area.min() >= 0.4 - 0.01

    plain = transforms_multicrop.MultiCrop(
        global_size=32, local_size=16, num_local=2, flip_p=0.0,
        jitter=transforms.ColourJitter(p=0.0), grayscale_p=0.0, global_blur_p=0.0,
        local_blur_p=0.0, normalize=None,
    )  # fmt: skip
    crops = plain(clip, np.random.default_rng(1))
    for t in range(2):
        top, left, h, w = crops["local_boxes"][t, 1]
        expected = transforms.resize_frame(clip[t, top : top + h, left : left + w], 16, 16)
        np.testing.assert_array_equal(crops["local"][t, 1], expected)


def test_bad_shapes_and_settings_raise():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        transforms.HorizontalFlip()(np.zeros((4, 4, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_size"):
        transforms.ShortSideResize(10, 5)(_clip(), np.random.default_rng(0))
    assert math.isclose(transforms.RandomResizedCrop(8).ratio[1], 4 / 3)


def test_multicrop_leaves_global_crops_plain_when_asked():
    clip = _clip(t=2, h=80, w=100)
    crops = transforms_multicrop.MultiCrop(
        global_size=32, local_size=16, num_local=2, flip_p=1.0, grayscale_p=1.0,
        augment_global=False, normalize=None,
    )(clip, np.random.default_rng(3))  # fmt: skip
    for t in range(2):
        top, left, h, w = crops["global_boxes"][t, 0]
        plain = transforms.resize_frame(clip[t, top : top + h, left : left + w], 32, 32)
        np.testing.assert_array_equal(crops["global"][t, 0], plain)
        # The local crops still go through flip and grayscale (p=1): equal channels.
        local = crops["local"][t, 0].astype(int)
        assert np.abs(local[..., 0] - local[..., 1]).max() <= 1
