"""Tests of the Mask-VOS mask-training data: clips with pseudo masks, joint augmentation."""

import dataclasses
import pickle

import numpy as np
import pytest
from PIL import Image

from configs.maskvos import corr_r18
from vosjax.data import clip_sampling, clip_sources, image_io
from vosjax.methods.maskvos import correspondence, mask_data, pseudo_masks

RED = (220, 30, 30)
BACKGROUND = (30, 90, 160)
HEIGHT, WIDTH, NUM_FRAMES = 44, 64, 5  # 44 rows: the masks' last block row is cropped
SMALL = dict(crop=32, min_short=36, max_short=56, view_jitter=0.3)


def _square_video(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t of the moving square [H, W, 3] and its stride-8 mask [ceil(H/8), W/8]."""
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[:] = BACKGROUND
    frame[8:24, 8 + 8 * t : 24 + 8 * t] = RED
    mask = np.zeros((-(-HEIGHT // 8), WIDTH // 8), np.uint8)
    mask[1:3, 1 + t : 3 + t] = 1
    return frame, mask


def _davis_root(tmp_path, names=("square", "square2"), masked=("square", "square2")):
    """A DAVIS-like root of moving-square videos and a pseudo-mask set for `masked`."""
    root, masks_folder = tmp_path / "davis", tmp_path / "masks" / "step_0"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(names) + "\n")
    masks_folder.mkdir(parents=True)
    for name in names:
        folder = root / "JPEGImages" / "480p" / name
        folder.mkdir(parents=True)
        frames, masks = zip(*(_square_video(t) for t in range(NUM_FRAMES)), strict=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t:05d}.png")
        if name in masked:
            pseudo_masks.write_masks(masks_folder / name, np.stack(masks))
    return clip_sources.davis_frames(root, "2017/train"), masks_folder


def _is_red(frames: np.ndarray) -> np.ndarray:
    r, g, b = (frames[..., c].astype(int) for c in range(3))
    return (r > 128) & (g < 128) & (b < 128)


def _cell_mean(x: np.ndarray) -> np.ndarray:
    """[T, S, S] -> [T, S/8, S/8] block means."""
    t, s = x.shape[:2]
    return x.reshape(t, s // 8, 8, s // 8, 8).mean(axis=(2, 4))


def test_source_packs_masks_upsampled_to_the_frames(tmp_path):
    source, masks_folder = _davis_root(tmp_path)
    packed_source = mask_data.PseudoMaskSource(source, masks_folder)
    sampler = clip_sampling.ClipSampler(num_frames=3, mode="consecutive")
    packed, indices = packed_source.sample_clip(0, sampler, np.random.default_rng(0))
    assert packed.shape == (3, HEIGHT, WIDTH, 4) and packed.dtype == np.uint8
    frames, labels = mask_data.unpack(packed)
    # On the block grid the upsampled mask is exactly the red square.
    np.testing.assert_array_equal(labels == 1, _is_red(frames))
    assert _is_red(frames).sum() == 3 * 16 * 16
    np.testing.assert_array_equal(frames, source.read_frames(0, indices))
    assert packed_source.read_frames(0, [0]).shape == (1, HEIGHT, WIDTH, 3)
    assert packed_source.name(1) == "square2" and len(packed_source) == 2
    restored = pickle.loads(pickle.dumps(packed_source))  # grain ships it to workers
    np.testing.assert_array_equal(
        restored.sample_clip(0, sampler, np.random.default_rng(0))[0], packed
    )


def test_upsample_masks_crops_ceil_and_extends_floor_sizes():
    masks = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    ceil = mask_data.upsample_masks(masks, 12, 20, "m")  # 2 x 3 blocks cover 16 x 24
    assert ceil.shape == (1, 12, 20)
    assert ceil[0, 11, 19] == 5 and ceil[0, 7, 8] == 1 and ceil[0, 8, 7] == 3
    floor = mask_data.upsample_masks(masks, 21, 30, "m")  # 2 x 3 blocks: floor of 21 / 8, 30 / 8
    assert floor.shape == (1, 21, 30)
    assert floor[0, 20, 29] == 5 and floor[0, 0, 29] == 2 and floor[0, 20, 0] == 3
    with pytest.raises(image_io.DataError, match="m: pseudo masks of size 2 x 3"):
        mask_data.upsample_masks(masks, 40, 24, "m")


def test_labels_follow_the_pixels_through_crop_flip_and_resize(tmp_path):
    source, masks_folder = _davis_root(tmp_path, names=("square",), masked=("square",))
    packed_source = mask_data.PseudoMaskSource(source, masks_folder)
    sampler = clip_sampling.ClipSampler(num_frames=3, frame_gap=1)
    transform = mask_data.MaskTwoViewTransform(**SMALL, num_objects=2, min_object_fraction=0.0)
    pixel_agreement, cell_agreement, with_square = [], [], 0
    for seed in range(40):
        packed, _ = packed_source.sample_clip(0, sampler, np.random.default_rng(seed))
        # Full resolution: the nearest-resized ids of the square are its (bilinear) red pixels.
        frames, ids = transform.crop_and_flip(
            *mask_data.unpack(packed), np.random.default_rng(seed)
        )
        pixel_agreement.append(np.mean(_is_red(frames) == (ids == 1)))
        # At /8, after object sampling: the square's object covers the red cells.
        out = transform(packed, np.random.default_rng(seed))
        np.testing.assert_array_equal(out["clip"], frames)
        red = _cell_mean(_is_red(out["clip"]))
        labels = out["labels"]
        assert labels.shape == (3, 4, 4) and labels.dtype == np.uint8
        if (red[0] >= 0.75).any():  # the square is in frame 0: both clusters are objects
            with_square += 1
            assert out["num_objects"] == 2
            square_id = np.bincount(labels[red >= 0.75]).argmax()
            assert square_id in (1, 2)
            assert set(np.unique(labels)) <= {1, 2}
            # Cells about half red are a tie of the block majority: only decided cells count.
            decided = (red >= 0.75) | (red <= 0.25)
            agree = (red >= 0.75) == (labels == square_id)
            cell_agreement.append(np.mean(agree[decided]))
    assert min(pixel_agreement) >= 0.97, pixel_agreement
    assert with_square >= 20
    assert min(cell_agreement) == 1.0, cell_agreement


def test_clip_view_and_affine_are_those_of_two_view_transform(tmp_path):
    source, masks_folder = _davis_root(tmp_path, names=("square",), masked=("square",))
    packed, _ = mask_data.PseudoMaskSource(source, masks_folder).sample_clip(
        0, clip_sampling.ClipSampler(num_frames=3), np.random.default_rng(0)
    )
    two_view = correspondence.TwoViewTransform(**SMALL)
    transform = mask_data.MaskTwoViewTransform(**SMALL)
    unflipped = dataclasses.replace(transform, flip=0.0)  # same draws, never flips
    flips = set()
    for seed in range(8):
        expected = two_view(packed[..., :3], np.random.default_rng(seed))
        out = transform(packed, np.random.default_rng(seed))
        for key in ("clip", "view", "affine"):
            np.testing.assert_array_equal(out[key], expected[key])
        plain = unflipped(packed, np.random.default_rng(seed))["clip"]
        flips.add(not np.array_equal(out["clip"], plain))
    assert flips == {True, False}  # both flipped and unflipped clips were compared


def _four_cluster_clip() -> np.ndarray:
    """Packed [3, 32, 32, 4]: frame 0 has ids 3, 5, 7, 9 on 7, 5, 3, 1 of its 16 cells."""
    cells = np.array([3] * 7 + [5] * 5 + [7] * 3 + [9], np.uint8)
    frame0 = cells.reshape(4, 4)
    ids = np.stack([frame0, np.roll(frame0, 1, axis=1), np.roll(frame0, 2, axis=0)])
    ids[2, 0, 0] = 11  # a cluster that is not in frame 0: always background
    labels = np.repeat(np.repeat(ids, 8, axis=1), 8, axis=2)
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    return mask_data.pack(frames, labels), ids


def _identity_transform(**kwargs) -> mask_data.MaskTwoViewTransform:
    return mask_data.MaskTwoViewTransform(crop=32, min_short=32, max_short=32, flip=0.0, **kwargs)


@pytest.mark.parametrize(
    ("min_fraction", "eligible"),
    [(0.0, {3, 5, 7, 9}), (0.2, {3, 5}), (5 / 16, {3, 5}), (0.35, {3}), (0.5, set())],
)
def test_objects_are_drawn_among_large_enough_clusters_of_frame_0(min_fraction, eligible):
    packed, ids = _four_cluster_clip()
    transform = _identity_transform(num_objects=2, min_object_fraction=min_fraction)
    drawn = set()
    for seed in range(30):
        out = transform(packed, np.random.default_rng(seed))
        labels = out["labels"]
        count = int(out["num_objects"])
        assert out["num_objects"].dtype == np.int32
        assert count == min(2, len(eligible))
        # Each object is one cluster, the same in every frame; everything else is background.
        mapping = {}
        for k in range(1, count + 1):
            clusters = np.unique(ids[labels == k])
            assert len(clusters) == 1 and clusters[0] in eligible
            mapping[int(clusters[0])] = k
            assert (labels[0] == k).any()
        assert len(mapping) == count
        lookup = np.zeros(256, np.uint8)
        lookup[list(mapping)] = list(mapping.values())
        expected = lookup[ids]
        np.testing.assert_array_equal(labels, expected)
        drawn |= set(mapping)
    assert drawn == eligible  # every eligible cluster is drawn for some seed


def test_block_mode_takes_each_blocks_majority():
    labels = np.zeros((1, 16, 8), np.uint8)
    labels[0, :8, :5] = 4  # 40 of 64 pixels: the majority
    labels[0, 8:, :4] = 2  # 32 of 64: a tie with 0 goes to the smaller id
    np.testing.assert_array_equal(mask_data.block_mode(labels), [[[4], [0]]])


def test_same_seed_same_output_bitwise(tmp_path):
    source, masks_folder = _davis_root(tmp_path, names=("square",), masked=("square",))
    packed, _ = mask_data.PseudoMaskSource(source, masks_folder).sample_clip(
        0, clip_sampling.ClipSampler(num_frames=3), np.random.default_rng(0)
    )
    transform = mask_data.MaskTwoViewTransform(**SMALL)
    first = transform(packed, np.random.default_rng(7))
    second = transform(packed, np.random.default_rng(7))
    other = transform(packed, np.random.default_rng(8))
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].dtype == second[key].dtype
    assert not np.array_equal(first["affine"], other["affine"])


def test_missing_masks_raise_data_error_naming_the_folder(tmp_path):
    source, masks_folder = _davis_root(tmp_path, masked=("square",))
    packed_source = mask_data.PseudoMaskSource(source, masks_folder)
    with pytest.raises(image_io.DataError, match=str(masks_folder / "square2")):
        packed_source.sample_clip(1, clip_sampling.ClipSampler(3), np.random.default_rng(0))
    missing = tmp_path / "no_such_set"
    with pytest.raises(image_io.DataError, match=str(missing)):
        mask_data.PseudoMaskSource(source, missing)
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 4\]"):
        mask_data.MaskTwoViewTransform(**SMALL)(packed_source.read_frames(0, [0]), None)


def _data_config(**fields):
    """corr_r18's smoke `config.data` plus the mask fields (new fields take their value's type)."""
    data = corr_r18.get_config("smoke").data
    for name, value in ({"num_objects": 3, "min_object_fraction": 0.1} | fields).items():
        data[name] = value
    return data


def test_make_transform_reads_the_config():
    transform = mask_data.make_transform(_data_config())
    expected = mask_data.MaskTwoViewTransform(
        crop=64, min_short=64, max_short=64, num_objects=3, min_object_fraction=0.1
    )
    assert transform == expected
    defaults = mask_data.make_transform(corr_r18.get_config("smoke").data)  # no mask fields
    assert (defaults.num_objects, defaults.min_object_fraction) == (2, 0.05)
    two_view_fields = {f.name for f in dataclasses.fields(correspondence.TwoViewTransform)}
    assert two_view_fields | {"num_objects", "min_object_fraction"} == {
        f.name for f in dataclasses.fields(mask_data.MaskTwoViewTransform)
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_objects", 0),
        ("num_objects", 255),
        ("num_objects", 2.0),
        ("min_object_fraction", 1.5),
        ("min_object_fraction", -0.1),
        ("min_object_fraction", float("nan")),
        ("min_object_fraction", "0.1"),
        ("crop", 60),
        ("min_short", 56),
        ("max_short", 48),
    ],
)
def test_make_transform_names_bad_fields(field, value):
    data = _data_config(**{field: value})
    with pytest.raises(ValueError, match=rf"config\.data\.{field}="):
        mask_data.make_transform(data)


def test_train_iterator_yields_documented_batches_and_skips_unmasked_videos(tmp_path):
    source, masks_folder = _davis_root(
        tmp_path, names=("square", "square2", "bare"), masked=("square", "square2")
    )
    iterator = mask_data.make_train_iterator(
        source,
        masks_folder,
        sampler=clip_sampling.ClipSampler(num_frames=3, frame_gap=2),
        transform=mask_data.MaskTwoViewTransform(crop=32, min_short=36, max_short=48),
        global_batch_size=2,
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    skipped = 0
    for _ in range(3):
        batch = next(iterator)
        expected = {
            "video": ((2, 3, 32, 32, 3), np.uint8),
            "view": ((2, 32, 32, 3), np.uint8),
            "affine": ((2, 2, 3), np.float32),
            "labels": ((2, 3, 4, 4), np.uint8),
            "num_objects": ((2,), np.int32),
            "frame_indices": ((2, 3), np.int32),
            "video_index": ((2,), np.int32),
            "skipped": ((2,), np.int32),
        }
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
        assert set(batch["video_index"]) <= {0, 1}  # 'bare' (2) has no masks
        assert np.all(batch["labels"] <= batch["num_objects"][:, None, None, None])
        assert np.all((batch["num_objects"] >= 1) & (batch["num_objects"] <= 2))
        np.testing.assert_array_equal(
            batch["frame_indices"][:, 1:] - batch["frame_indices"][:, :-1], 2
        )
        skipped += int(batch["skipped"].sum())
    assert skipped >= 1  # 3 batches of 2 cover every video once at least: 'bare' was skipped
