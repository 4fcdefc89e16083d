"""Tests of the still-image sources: image + mask folders, DAVIS frames, synthetic stills."""

import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from vosjax.data import image_io, still_images
from vosjax.data.synthetic import generator

DAVIS2016 = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "DAVIS2016"
H, W = 10, 14


def _image(value: int) -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = value, 255 - value, 80
    return image


def _square_values(low: int, high: int) -> np.ndarray:
    """`high` on rows 2..5 x columns 3..8, `low` elsewhere."""
    values = np.full((H, W), low, np.uint8)
    values[2:6, 3:9] = high
    return values


SQUARE = _square_values(0, 1).astype(bool)


def _write_pair(folder: pathlib.Path, name: str, value: int, mask: Image.Image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_image(value)).save(folder / f"{name}.jpg", quality=95)
    mask.save(folder / f"{name}.png")


def _indexed(values: np.ndarray) -> Image.Image:
    image = Image.fromarray(values, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return image


def _msra_like(root: pathlib.Path) -> pathlib.Path:
    """Four pairs in two folders: {0, 255} gray, 0/1 gray, indexed, and a soft gray mask."""
    _write_pair(root / "Imgs", "75", 10, Image.fromarray(_square_values(0, 255)))
    _write_pair(root / "Imgs", "8", 60, Image.fromarray(_square_values(0, 1)))
    _write_pair(root / "more" / "b", "a", 120, _indexed(_square_values(0, 1)))
    # A soft mask: 127 is background, 128 foreground; 0/1 rules must not apply.
    _write_pair(root / "more", "soft", 200, Image.fromarray(_square_values(127, 128)))
    return root


def test_folder_source_reads_every_mask_form(tmp_path):
    source = still_images.ImageMaskFolderSource(_msra_like(tmp_path))
    assert len(source) == 4
    assert [source.name(i) for i in range(4)] == ["Imgs/75", "Imgs/8", "more/b/a", "more/soft"]
    for i, value in enumerate((10, 60, 120, 200)):
        image, mask = source.read(i)
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, SQUARE)
        # JPEG is lossy; the colours stay near what was written.
        assert np.abs(image.astype(int) - _image(value)).max() <= 6
    restored = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(restored.read(2)[1], SQUARE)


def test_folder_source_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(image_io.DataError, match=str(tmp_path)):
        still_images.ImageMaskFolderSource(tmp_path)  # empty
    (tmp_path / "masks_only").mkdir()
    Image.fromarray(_square_values(0, 255)).save(tmp_path / "masks_only" / "x.png")
    with pytest.raises(image_io.DataError, match="holds no image"):
        still_images.ImageMaskFolderSource(tmp_path / "masks_only")
    folder = tmp_path / "pairs"
    _write_pair(folder, "good", 10, Image.fromarray(_square_values(0, 255)))
    Image.fromarray(_image(20)).save(folder / "lonely.jpg")
    with pytest.raises(image_io.DataError, match=r"lonely\.jpg: no mask lonely\.png"):
        still_images.ImageMaskFolderSource(folder)
    (folder / "lonely.jpg").unlink()
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(folder / "good.png")
    source = still_images.ImageMaskFolderSource(folder)
    with pytest.raises(image_io.DataError, match=r"good\.png: mask is 11x14"):
        source.read(0)
    with pytest.raises(IndexError):
        source.read(1)


def test_read_foreground_thresholds_soft_and_16_bit_masks(tmp_path):
    values = np.array([[0, 100, 127, 128, 255]], np.uint8)
    Image.fromarray(values).save(tmp_path / "soft.png")
    np.testing.assert_array_equal(
        still_images.read_foreground(tmp_path / "soft.png"), [[0, 0, 0, 1, 1]]
    )
    wide = np.array([[0, 300, 32767, 32768, 65535]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(
        still_images.read_foreground(tmp_path / "wide.png"), [[0, 0, 0, 1, 1]]
    )
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(image_io.DataError, match=r"bad\.png"):
        still_images.read_foreground(tmp_path / "bad.png")


def test_davis_still_frames_on_real_davis2016():
    source = still_images.DavisStillFrames(DAVIS2016, "2016/train", "240p")
    assert len(source) == 2079
    names = [source.name(i) for i in range(len(source))]
    assert len({n.split("/")[0] for n in names}) == 30
    assert names[0] == "bear/00000" and names[81] == "bear/00081" and names[82] != "bear/00082"
    image, mask = source.read(0)
    assert image.shape == (240, 427, 3) and image.dtype == np.uint8
    assert mask.shape == (240, 427) and mask.dtype == bool
    annotation = np.asarray(Image.open(DAVIS2016 / "Annotations" / "240p" / "bear" / "00000.png"))
    np.testing.assert_array_equal(mask, annotation == 255)
    assert 0 < mask.sum() < mask.size
    # bear/00077.png is the one 'LA' annotation of the set; its gray channel is the mask.
    la = Image.open(DAVIS2016 / "Annotations" / "240p" / "bear" / "00077.png")
    assert la.mode == "LA"
    np.testing.assert_array_equal(source.read(77)[1], np.asarray(la.getchannel(0)) == 255)
    assert source.read(77)[1].any()
    np.testing.assert_array_equal(
        image, image_io.read_frame(DAVIS2016 / "JPEGImages" / "240p" / "bear" / "00000.jpg")
    )


def test_davis_still_frames_needs_an_annotation_per_frame(tmp_path):
    (tmp_path / "ImageSets" / "2016").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2016" / "train.txt").write_text("seq\n")
    frames = tmp_path / "JPEGImages" / "240p" / "seq"
    masks = tmp_path / "Annotations" / "240p" / "seq"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_image(10 * i)).save(frames / f"{i:05d}.jpg")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks / "00000.png")  # empty: allowed
    with pytest.raises(image_io.DataError, match=r"00001\.jpg: no annotation"):
        still_images.DavisStillFrames(tmp_path)
    Image.fromarray(_square_values(0, 255)).save(masks / "00001.png")
    source = still_images.DavisStillFrames(tmp_path)
    assert len(source) == 2 and source.name(1) == "seq/00001"
    assert not source.read(0)[1].any()
    np.testing.assert_array_equal(source.read(1)[1], SQUARE)


def test_synthetic_stills_are_frame_0_of_seeded_videos():
    source = still_images.SyntheticStills("easy", 3, seed=5, height=32, width=40)
    assert len(source) == 3 and source.name(2) == "synthetic/5/2"
    image, mask = source.read(2)
    video = generator.generate_video(
        generator.split_seed(5, "still", 2),
        num_frames=1,
        height=32,
        width=40,
        config=generator.EASY,
    )
    np.testing.assert_array_equal(image, video.frames[0])
    np.testing.assert_array_equal(mask, video.masks[0] > 0)
    assert image.shape == (32, 40, 3) and mask.dtype == bool and mask.any()
    again = still_images.SyntheticStills(generator.EASY, 3, seed=5, height=32, width=40)
    np.testing.assert_array_equal(again.read(2)[0], image)
    assert not np.array_equal(source.read(1)[0], image)
    with pytest.raises(ValueError, match="count"):
        still_images.SyntheticStills("easy", 0)
    with pytest.raises(ValueError, match="synthetic level"):
        still_images.SyntheticStills("impossible", 3)


def test_open_still_source_dispatches_on_the_path(tmp_path):
    default = still_images.open_still_source(None, synthetic_config="hard", synthetic_count=7)
    assert isinstance(default, still_images.SyntheticStills) and len(default) == 7
    assert default.config == generator.HARD
    assert isinstance(still_images.open_still_source(""), still_images.SyntheticStills)
    davis = still_images.open_still_source(str(DAVIS2016), imageset="2016/val", resolution="480p")
    assert isinstance(davis, still_images.DavisStillFrames) and davis.name(0) == "blackswan/00000"
    folder = still_images.open_still_source(str(_msra_like(tmp_path / "msra")))
    assert isinstance(folder, still_images.ImageMaskFolderSource) and len(folder) == 4
    with pytest.raises(FileNotFoundError, match="nowhere"):
        still_images.open_still_source(str(tmp_path / "nowhere"))
