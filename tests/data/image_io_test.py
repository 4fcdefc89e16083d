"""Tests for vosjax.data.image_io: mask forms, the palette, and every unreadable-file case."""

import pathlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from vosjax.data import image_io


def _cut_in_half(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_palette_first_colours():
    palette = image_io.davis_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(
        palette[:8],
        [
            (0, 0, 0),
            (128, 0, 0),
            (0, 128, 0),
            (128, 128, 0),
            (0, 0, 128),
            (128, 0, 128),
            (0, 128, 128),
            (128, 128, 128),
        ],
    )
    np.testing.assert_array_equal(palette[255], (224, 224, 192))
    # The PASCAL map gives every id its own colour, so colour masks decode unambiguously.
    assert len({tuple(c) for c in palette.tolist()}) == 256


def test_write_read_round_trip_ids_0_to_10_and_void(tmp_path):
    ids = np.array(list(range(11)) + [255], np.uint8)
    mask = np.tile(ids, (3, 2))  # [3, 24]
    path = tmp_path / "deep" / "folder" / "00000.png"
    image_io.write_mask(path, mask)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    read = image_io.read_mask(path)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, mask)


def test_write_mask_rejects_bad_shapes_and_ids(tmp_path):
    with pytest.raises(ValueError, match=r"expected a \[H, W\] mask, got shape \(2, 2, 3\)"):
        image_io.write_mask(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"0\.\.255, got 0\.\.300"):
        image_io.write_mask(tmp_path / "b.png", np.array([[0, 300]]))


def test_davis2016_binary_l_mask_is_object_1(davis2016_root):
    path = davis2016_root / "Annotations" / "480p" / "blackswan" / "00000.png"
    with Image.open(path) as image:
        assert image.mode == "L"
        raw = np.asarray(image)
    mask = image_io.read_mask(path)
    assert set(np.unique(mask).tolist()) == {0, 1}
    np.testing.assert_array_equal(mask, (raw == 255).astype(np.uint8))


def test_davis2016_la_mask_bear_00077(davis2016_root):
    path = davis2016_root / "Annotations" / "240p" / "bear" / "00077.png"
    with Image.open(path) as image:
        assert image.mode == "LA"
    mask = image_io.read_mask(path)
    assert mask.shape == (240, 427)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert int(mask.sum()) == 11523  # the object's 255 pixels of the L channel


def test_grayscale_small_ids_are_object_ids(tmp_path):
    values = np.array([[0, 1, 2], [3, 2, 0]], np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "m.png")
    np.testing.assert_array_equal(image_io.read_mask(tmp_path / "m.png"), values)


def test_grayscale_soft_values_are_rejected(tmp_path):
    path = tmp_path / "soft.png"
    Image.fromarray(np.array([[0, 128], [200, 0]], np.uint8), mode="L").save(path)
    with pytest.raises(image_io.DataError) as info:
        image_io.read_mask(path)
    assert str(path) in str(info.value)
    assert "[0, 128, 200]" in str(info.value) and "{0, 255}" in str(info.value)


def test_one_bit_and_black_white_rgb_masks_are_object_1(tmp_path):
    binary = np.array([[0, 1, 1], [1, 0, 0]], bool)
    Image.fromarray(binary).save(tmp_path / "bits.png")
    rgb = np.where(binary[..., None], 255, 0).astype(np.uint8).repeat(3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "bw.png")
    for name in ("bits.png", "bw.png"):
        np.testing.assert_array_equal(image_io.read_mask(tmp_path / name), binary.astype(np.uint8))


def test_colour_mask_with_palette_colours_decodes_ids(tmp_path):
    ids = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    Image.fromarray(image_io.davis_palette()[ids]).save(tmp_path / "colour.png")
    np.testing.assert_array_equal(image_io.read_mask(tmp_path / "colour.png"), ids)


def test_colour_mask_with_unknown_colour_is_rejected(tmp_path):
    rgb = image_io.davis_palette()[np.array([[0, 1], [2, 0]])]
    rgb[1, 1] = (10, 20, 30)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(image_io.DataError) as info:
        image_io.read_mask(path)
    assert str(path) in str(info.value)
    assert "(10, 20, 30)" in str(info.value) and "not in the DAVIS palette" in str(info.value)


def test_read_frame_is_rgb_and_converts_gray(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    Image.fromarray(rgb).save(tmp_path / "f.png")
    np.testing.assert_array_equal(image_io.read_frame(tmp_path / "f.png"), rgb)
    Image.fromarray(np.full((2, 3), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(image_io.read_frame(tmp_path / "g.png"), np.full((2, 3, 3), 77))
    assert image_io.frame_size(tmp_path / "f.png") == (2, 3)


def test_read_real_davis_frame(davis2016_root):
    path = davis2016_root / "JPEGImages" / "480p" / "blackswan" / "00000.jpg"
    frame = image_io.read_frame(path)
    assert frame.shape == (480, 854, 3) and frame.dtype == np.uint8
    assert image_io.frame_size(path) == (480, 854)


@pytest.mark.parametrize("fn", [image_io.read_frame, image_io.read_mask, image_io.frame_size])
def test_missing_file(tmp_path, fn):
    path = tmp_path / "nope.png"
    with pytest.raises(image_io.DataError, match="file not found") as info:
        fn(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["noise.png", "noise.jpg"])
@pytest.mark.parametrize("fn", [image_io.read_frame, image_io.read_mask, image_io.frame_size])
def test_random_bytes_are_unreadable(tmp_path, name, fn):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(image_io.DataError, match="unreadable") as info:
        fn(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(davis2016_root, tmp_path):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # else PIL would pad the image silently
    src = davis2016_root / "JPEGImages" / "480p" / "blackswan" / "00000.jpg"
    path = _cut_in_half(src, tmp_path / "00000.jpg")
    with pytest.raises(image_io.DataError, match="truncated") as info:
        image_io.read_frame(path)
    assert str(path) in str(info.value)


def test_truncated_png(davis2016_root, tmp_path):
    src = davis2016_root / "Annotations" / "480p" / "blackswan" / "00000.png"
    path = _cut_in_half(src, tmp_path / "00000.png")
    for fn in (image_io.read_mask, image_io.read_frame):
        with pytest.raises(image_io.DataError, match="truncated") as info:
            fn(path)
        assert str(path) in str(info.value)


def test_overlay_blends_palette_colours():
    frame = np.full((1, 2, 3), 100, np.uint8)
    out = image_io.overlay(frame, np.array([[0, 1]]), alpha=0.5)
    np.testing.assert_array_equal(out, [[[100, 100, 100], [114, 50, 50]]])
