"""Tests of the SHLS pseudo-sequences: objects, pasting, occlusion, warps, the loader."""

import cv2
import numpy as np
import pytest
from PIL import Image

from vosjax.data import image_io, pseudo_sequences, still_images

S = 96
BLUE, GREY = (0, 0, 255), (128, 128, 128)
RED, GREEN, YELLOW, MAGENTA = (255, 0, 0), (0, 255, 0), (255, 255, 0), (255, 0, 255)
OBJECT_COLOURS = [RED, GREEN, YELLOW, MAGENTA]
# Every colour a pixel may take (black: outside the warped frame), to classify pixels.
PALETTE = np.asarray([BLUE, (0, 0, 0), *OBJECT_COLOURS], np.float32)
NO_JITTER = (0.0, 0.0, 0.0, 0.0)


def _main(radius: int = 18, size: int = S) -> tuple[np.ndarray, np.ndarray]:
    """A red disc on blue, with its mask."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:] = BLUE
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2 - 5, size // 2 + 3), radius, 1, -1)
    image[mask > 0] = RED
    return image, mask.astype(bool)


def _donor(colour: tuple[int, int, int], shape: int) -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured disc, square or triangle on grey, 80 x 120."""
    mask = np.zeros((80, 120), np.uint8)
    if shape == 0:
        cv2.circle(mask, (50, 40), 25, 1, -1)
    elif shape == 1:
        mask[20:60, 60:110] = 1
    else:
        cv2.fillPoly(mask, [np.asarray([[10, 70], [70, 70], [40, 10]], np.int32)], 1)
    image = np.zeros((80, 120, 3), np.uint8)
    image[:] = GREY
    image[mask > 0] = colour
    return image, mask.astype(bool)


DONORS = [_donor(c, i) for i, c in enumerate((GREEN, YELLOW, MAGENTA))]


def _classify(frame: np.ndarray) -> np.ndarray:
    """Index into PALETTE of each pixel's nearest colour."""
    distance = np.linalg.norm(frame[..., None, :].astype(np.float32) - PALETTE, axis=-1)
    return distance.argmin(-1)


def _maker(**kwargs) -> pseudo_sequences.PseudoSequenceMaker:
    return pseudo_sequences.PseudoSequenceMaker(size=S, **kwargs)


def test_shapes_dtypes_and_label_range():
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    mask = np.zeros((60, 90), bool)
    mask[10:40, 20:50] = True
    for resize in ("crop", "stretch"):
        maker = pseudo_sequences.PseudoSequenceMaker(size=48, seq_len=4, resize=resize)
        out = maker(image, mask, DONORS, np.random.default_rng(1))
        assert out["frames"].shape == (4, 48, 48, 3) and out["frames"].dtype == np.uint8
        assert out["masks"].shape == (4, 48, 48) and out["masks"].dtype == np.uint8
        assert out["num_objects"].dtype == np.int32 and out["num_objects"].shape == ()
        k = int(out["num_objects"])
        assert 2 <= k <= 3  # one component + 1..2 pasted
        np.testing.assert_array_equal(np.unique(out["masks"][0]), np.arange(k + 1))
        assert out["masks"].max() <= k


def test_masks_follow_the_pixels_they_label():
    maker = _maker(seq_len=4, color_jitter=NO_JITTER, paste_scale=(0.35, 0.5))
    image, mask = _main()
    counts = []
    for seed in range(6):
        out = maker(image, mask, DONORS, np.random.default_rng(seed))
        k = int(out["num_objects"])
        counts.append(k)
        # Main object = label 1 (red); donor j used in order = label 2 + j.
        expected = {1 + label: 2 + label for label in range(k)}
        for t, (frame, labels) in enumerate(zip(out["frames"], out["masks"], strict=True)):
            colour = _classify(frame)
            if t == 0:  # no warp: exact colours
                for label, index in expected.items():
                    assert (frame[labels == label] == PALETTE[index]).all()
                assert (frame[labels == 0] == BLUE).all()
                continue
            for label, index in expected.items():
                if (labels == label).sum() < 50:
                    continue  # nearly warped out: too few pixels to measure
                assert np.mean(colour[labels == label] == index) >= 0.95, (seed, t, label)
            # Occluded pixels uncovered by motion or warps keep their object's label.
            assert np.mean(colour[labels == 0] >= 2) <= 0.01, (seed, t)
    assert set(counts) == {2, 3}


def test_occlusion_of_frame_0_is_bounded():
    image, mask = _main(radius=12)
    area = mask.sum()

    def visible(max_occlusion: float, seed: int) -> float:
        maker = _maker(max_occlusion=max_occlusion, paste_scale=(0.45, 0.6), seq_len=1)
        out = maker(image, mask, DONORS, np.random.default_rng(seed))
        return float((out["masks"][0] == 1).sum() / area)

    bounded = [visible(0.3, seed) for seed in range(25)]
    assert min(bounded) >= 0.7 - 1e-6
    assert min(bounded) < 1.0  # objects do get occluded, within the bound
    free = [visible(1.0, seed) for seed in range(25)]
    assert min(free) < 0.7  # without the bound the same draws hide more


def test_components_are_objects_largest_first():
    image = np.zeros((S, S, 3), np.uint8)
    mask = np.zeros((S, S), bool)
    # Areas 225, 600, 100 and 4 pixels.
    for y0, x0, y1, x1 in [(5, 5, 20, 20), (40, 5, 70, 25), (5, 60, 15, 70), (60, 60, 62, 62)]:
        mask[y0:y1, x0:x1] = True
    out = _maker(max_objects=3, color_jitter=NO_JITTER)(
        image, mask, DONORS, np.random.default_rng(0)
    )
    assert int(out["num_objects"]) == 3  # no room: nothing pasted
    labels = out["masks"][0]
    np.testing.assert_array_equal(np.bincount(labels.ravel(), minlength=4)[1:], [600, 225, 100])
    assert labels[60, 60] == 0  # 4 pixels < 0.005 of the frame: not an object
    out = _maker(max_objects=2)(image, mask, DONORS, np.random.default_rng(0))
    np.testing.assert_array_equal(np.bincount(out["masks"][0].ravel())[1:], [600, 225])


def test_empty_foreground_gets_pasted_objects_only():
    image, _ = _main()
    empty = np.zeros((S, S), bool)
    counts = {
        int(_maker()(image, empty, DONORS, np.random.default_rng(seed))["num_objects"])
        for seed in range(12)
    }
    assert counts == {1, 2, 3}
    out = _maker()(image, empty, [], np.random.default_rng(0))
    assert int(out["num_objects"]) == 0 and not out["masks"].any()


def test_same_seed_same_sequence():
    image, mask = _main()
    maker = _maker()
    a = maker(image, mask, DONORS, np.random.default_rng(7))
    b = maker(image, mask, DONORS, np.random.default_rng(7))
    c = maker(image, mask, DONORS, np.random.default_rng(8))
    for key in ("frames", "masks", "num_objects"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["frames"], c["frames"])
    # Jitter changes only the later frames' colours: frame 0 stays the composite.
    still = _maker(color_jitter=NO_JITTER)(image, mask, DONORS, np.random.default_rng(7))
    np.testing.assert_array_equal(still["frames"][0], a["frames"][0])
    np.testing.assert_array_equal(still["masks"], a["masks"])
    assert not np.array_equal(still["frames"][1:], a["frames"][1:])


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="max_occlusion"):
        pseudo_sequences.PseudoSequenceMaker(max_occlusion=1.5)
    with pytest.raises(ValueError, match="paste_scale"):
        pseudo_sequences.PseudoSequenceMaker(paste_scale=(0.6, 0.1))
    with pytest.raises(ValueError, match="resize"):
        pseudo_sequences.PseudoSequenceMaker(resize="pad")
    image, mask = _main()
    with pytest.raises(ValueError, match="main mask"):
        _maker()(image, mask[:-1], DONORS, np.random.default_rng(0))
    with pytest.raises(ValueError, match="donor 0 image"):
        _maker()(image, mask, [(image[..., 0], mask)], np.random.default_rng(0))


def _grid(frame: np.ndarray) -> np.ndarray:
    """Superpixels of 8 x 8 cells."""
    rows, cols = np.indices(frame.shape[:2])
    return (rows // 8) * (frame.shape[1] // 8 + 1) + cols // 8


def test_loader_adds_superpixels_and_image_index():
    source = still_images.SyntheticStills("easy", 5, height=40, width=56)
    loader = pseudo_sequences.PseudoSequenceLoader(
        source, pseudo_sequences.PseudoSequenceMaker(size=32, seq_len=2), superpixel_fn=_grid
    )
    out = loader(3, np.random.default_rng(0))
    assert out["image_index"] == 3 and out["image_index"].dtype == np.int32
    assert out["superpixels"].shape == (2, 32, 32) and out["superpixels"].dtype == np.int32
    np.testing.assert_array_equal(out["superpixels"][1], _grid(out["frames"][1]))
    assert 1 <= int(out["num_objects"]) <= 3
    again = loader(3, np.random.default_rng(0))
    np.testing.assert_array_equal(again["frames"], out["frames"])
    single = pseudo_sequences.PseudoSequenceLoader(
        still_images.SyntheticStills("easy", 1), pseudo_sequences.PseudoSequenceMaker(size=32)
    )
    assert "superpixels" not in single(0, np.random.default_rng(0))  # no donor to draw


def test_loader_names_a_corrupt_image(tmp_path):
    for name in ("a", "b"):
        Image.fromarray(np.full((20, 20, 3), 50, np.uint8)).save(tmp_path / f"{name}.jpg")
        Image.fromarray(np.full((20, 20), 255, np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "b.jpg").write_bytes((tmp_path / "b.jpg").read_bytes()[:40])
    loader = pseudo_sequences.PseudoSequenceLoader(
        still_images.ImageMaskFolderSource(tmp_path), pseudo_sequences.PseudoSequenceMaker(size=16)
    )
    with pytest.raises(image_io.DataError, match=r"b\.jpg"):
        loader(1, np.random.default_rng(0))
