"""Tests of video label propagation: known answers on synthetic feature videos."""

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vosjax.ops import affinity, propagation

GRID = (20, 26)
CHANNELS = 64


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _canvas(seed: int = 0, size: tuple[int, int] = (80, 84)) -> np.ndarray:
    """Random features, distinct at every position (cosines between positions ~ +-0.1)."""
    return _unit(np.random.default_rng(seed).normal(size=(*size, CHANNELS)))


def _window(canvas: np.ndarray, t: int, step: tuple[int, int]) -> np.ndarray:
    """Frame t of a camera panning over the canvas: content moves by `step` cells per frame."""
    y0, x0 = 28 - t * step[0], 28 - t * step[1]
    return canvas[y0 : y0 + GRID[0], x0 : x0 + GRID[1]]


def _boxes(boxes: dict[int, tuple[int, int, int, int]], shift=(0, 0)) -> np.ndarray:
    ids = np.zeros(GRID, np.uint8)
    for obj, (y0, y1, x0, x1) in boxes.items():
        y0, y1 = max(y0 + shift[0], 0), max(y1 + shift[0], 0)
        x0, x1 = max(x0 + shift[1], 0), max(x1 + shift[1], 0)
        ids[y0:y1, x0:x1] = obj
    return ids


BOXES = {1: (4, 10, 5, 13), 2: (12, 17, 3, 8)}


def _seen(shift: tuple[int, int]) -> np.ndarray:
    """Positions whose content was in view at frame 0 (the others have no known answer)."""
    yy, xx = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
    y, x = yy - shift[0], xx - shift[1]
    return (y >= 0) & (y < GRID[0]) & (x >= 0) & (x < GRID[1])


@pytest.mark.parametrize("preset", sorted(propagation.PRESETS))
def test_static_video_keeps_the_first_mask(preset):
    config = propagation.PRESETS[preset]
    frame = _canvas()[: GRID[0], : GRID[1]]
    mask = np.kron(_boxes(BOXES), np.ones((8, 8), np.uint8))  # full resolution, stride 8
    prop = propagation.VideoPropagator(config, num_classes=3)
    labels0 = prop.labels_from_mask(mask, GRID)
    outputs = list(prop.run((frame for _ in range(config.num_recent + 3)), given={0: labels0}))
    first = prop.to_mask(labels0, mask.shape)
    assert (first == mask).mean() > 0.97  # bilinear down / up blurs the box corners only
    for t, probs in enumerate(outputs):
        np.testing.assert_array_equal(np.argmax(probs, -1), np.argmax(labels0, -1), f"frame {t}")
        np.testing.assert_array_equal(prop.to_mask(probs, mask.shape), first, f"frame {t}")
        np.testing.assert_allclose(np.sum(probs, -1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "preset,step", [("dino", (1, 2)), ("dino", (-2, 1)), ("crw", (1, 2)), ("crw", (2, -1))]
)
def test_translating_video_is_tracked(preset, step):
    # 9 frames: the 7-frame ring of DINO wraps around. CRW's circle (|d| < 12) holds the step.
    config = propagation.PRESETS[preset]
    canvas = _canvas(1)
    prop = propagation.VideoPropagator(config, num_classes=3)
    labels0 = propagation.mask_to_labels(_boxes(BOXES), 3, GRID, "nearest")
    frames = (_window(canvas, t, step) for t in range(9))
    for t, probs in enumerate(prop.run(frames, given={0: labels0})):
        shift = (t * step[0], t * step[1])
        want = _boxes(BOXES, shift)
        seen = _seen(shift)
        got = np.argmax(probs, -1)
        np.testing.assert_array_equal(got[seen], want[seen], f"frame {t}")
        assert seen.sum() > 60


def test_object_appearing_later_is_absent_before_and_tracked_after():
    step = (1, 1)
    canvas = _canvas(2)
    config = propagation.PRESETS["dino"]
    prop = propagation.VideoPropagator(config, num_classes=3)
    late = {2: (13, 18, 14, 20)}  # object 2, annotated at frame 10 only, at this box
    labels0 = propagation.mask_to_labels(_boxes({1: BOXES[1]}), 3, GRID, "nearest")
    labels10 = propagation.mask_to_labels(_boxes(late), 3, GRID, "nearest")
    frames = (_window(canvas, t, step) for t in range(14))
    outputs = list(prop.run(frames, given={0: labels0, 10: labels10}))
    for t, probs in enumerate(outputs):
        probs = np.asarray(probs)
        want = _boxes({1: BOXES[1]}, (t, t))
        if t < 10:
            np.testing.assert_array_equal(probs[..., 2], 0.0, f"frame {t}")
        else:
            want = np.where(_boxes(late, (t - 10, t - 10)) > 0, 2, want)
        seen = _seen((t, t))
        np.testing.assert_array_equal(np.argmax(probs, -1)[seen], want[seen], f"frame {t}")
    # On its annotated frame the object's channel is exactly the given labels.
    np.testing.assert_array_equal(outputs[10][..., 2], labels10[..., 2])


def test_annotated_frame_overrides_only_the_annotated_objects():
    prop = propagation.VideoPropagator(propagation.PRESETS["crw"], num_classes=3)
    frame = _canvas(3)[: GRID[0], : GRID[1]]
    labels0 = propagation.mask_to_labels(_boxes(BOXES), 3, GRID, "nearest")
    soft = np.zeros((*GRID, 3), np.float32)
    soft[..., 2] = 0.25  # soft labels of object 2 on frame 2, nothing else annotated
    outputs = list(prop.run((frame for _ in range(3)), given={0: labels0, 2: soft}))
    plain = list(prop.run((frame for _ in range(3)), given={0: labels0}))
    np.testing.assert_array_equal(outputs[0], labels0)
    np.testing.assert_allclose(outputs[2][..., 2], 0.25)
    # Background and object 1 keep their propagated share of the rest.
    np.testing.assert_allclose(outputs[2][..., :2], 0.75 * np.asarray(plain[2])[..., :2], atol=1e-7)


def test_frames_before_the_first_annotation_are_background():
    prop = propagation.VideoPropagator(propagation.PRESETS["dino"], num_classes=3)
    frame = _canvas(4)[: GRID[0], : GRID[1]]
    labels = propagation.mask_to_labels(_boxes(BOXES), 3, GRID, "nearest")
    outputs = [np.asarray(p) for p in prop.run((frame for _ in range(5)), given={2: labels})]
    for t in (0, 1):
        np.testing.assert_array_equal(outputs[t][..., 0], 1.0)
        np.testing.assert_array_equal(outputs[t][..., 1:], 0.0)
    np.testing.assert_array_equal(np.argmax(outputs[4], -1), _boxes(BOXES))


@pytest.mark.parametrize("num_recent", [0, 2, 3])
@pytest.mark.parametrize("pad", [False, True])
def test_video_equals_a_frame_by_frame_reference(num_recent, pad):
    # Random features and soft labels over 7 frames: the ring must hold exactly the frames
    # t-N .. t-1 (only the existing ones early on, or CRW's copies of frame 0 in place of the
    # missing ones with `pad_with_anchor`) with their predicted labels. The reference builds
    # each frame's context explicitly and calls the one-step op (itself checked against a
    # dense numpy reference in affinity_test).
    rng = np.random.default_rng(5)
    h, w, c, k = 11, 13, 8, 3
    video = rng.normal(size=(7, h, w, c)).astype(np.float32)
    labels0 = rng.dirichlet(np.ones(k), size=(h, w)).astype(np.float32)
    config = dataclasses.replace(
        propagation.PRESETS["crw"],
        radius=4.0,
        num_recent=num_recent,
        block_size=(4, 5),
        pad_with_anchor=pad,
    )
    prop = propagation.VideoPropagator(config, num_classes=k)
    got = [np.asarray(p) for p in prop.run(iter(video), given={0: labels0})]

    feats = _unit(video)
    preds = [labels0]
    for t in range(1, len(video)):
        recent = list(range(max(1, t - num_recent), t))
        if pad:  # CRW: the video padded in front with copies of frame 0
            recent = [0] * (num_recent - len(recent)) + recent
        pred = affinity.propagate_jit(
            feats[t],
            feats[0],
            preds[0],
            feats[recent].reshape(len(recent), h, w, c),
            np.reshape([preds[i] for i in recent], (len(recent), h, w, k)),
            np.ones(len(recent), bool),
            top_k=config.top_k,
            temperature=config.temperature,
            radius=config.radius,
            neighbourhood=config.neighbourhood,
            restrict_anchor=config.restrict_first_frame,
        )
        preds.append(np.asarray(pred))
    for t in range(len(video)):
        np.testing.assert_allclose(got[t], preds[t], atol=1e-5, err_msg=f"frame {t}")


def test_errors_name_the_problem():
    prop = propagation.VideoPropagator(propagation.PRESETS["dino"], num_classes=3)
    frame = np.zeros((*GRID, 4), np.float32)
    good = np.zeros((*GRID, 3), np.float32)
    with pytest.raises(ValueError, match=r"given\[0\]"):
        list(prop.run([frame], given={0: np.zeros((*GRID, 2), np.float32)}))
    with pytest.raises(ValueError, match="features of frame 1"):
        list(prop.run([frame, frame[:-1]], given={0: good}))
    with pytest.raises(ValueError, match="only 1 frames"):
        list(prop.run([frame], given={0: good, 5: good}))
    with pytest.raises(ValueError, match=r"objects\[0\]"):
        list(prop.run([frame], given={0: good}, objects={0: [3]}))


def test_presets_and_config_dict():
    dino, crw, ino = (propagation.PRESETS[n] for n in ("dino", "crw", "ino"))
    assert (dino.top_k, dino.temperature, dino.num_recent, dino.radius) == (5, 0.1, 7, 12.0)
    assert (dino.neighbourhood, dino.restrict_first_frame, dino.first_mask) == (
        "square",
        True,
        "nearest",
    )
    assert (crw.top_k, crw.temperature, crw.num_recent, crw.radius) == (10, 0.05, 20, 12.0)
    assert (crw.neighbourhood, crw.restrict_first_frame, crw.first_mask) == (
        "circle",
        False,
        "bilinear",
    )
    assert (ino.top_k, ino.temperature, ino.num_recent, ino.radius) == (5, 0.1, 10, 40.0)
    assert (ino.neighbourhood, ino.first_mask) == ("square", "bilinear_align_corners")
    # The released readers and writers (tests/reference/propagation_cases.py checks them).
    reader = ("short_side", "size_multiple", "fit", "upsample", "first_output")
    assert tuple(getattr(dino, f) for f in reader) == (480, 64, "resize", "reader", "given")
    assert tuple(getattr(crw, f) for f in reader) == (None, 8, "pad", "frame", "labels")
    assert tuple(getattr(ino, f) for f in reader) == (480, 8, "resize", "reader", "given")
    assert (dino.keep_ties, dino.pad_with_anchor) == (True, False)
    assert (crw.keep_ties, crw.pad_with_anchor) == (False, True)
    assert (ino.keep_ties, ino.pad_with_anchor) == (True, False)
    with pytest.raises(ValueError, match="PropagationConfig.short_side"):
        propagation.from_config_dict({"preset": "crw", "short_side": 480})
    with pytest.raises(ValueError, match="PropagationConfig.upsample"):
        propagation.from_config_dict({"preset": "dino", "upsample": "nearest"})

    cfg = ml_collections.ConfigDict({"preset": "crw", "top_k": 7, "radius": None})
    got = propagation.from_config_dict(cfg)
    assert got == dataclasses.replace(crw, top_k=7, radius=None)
    full = ml_collections.ConfigDict(dataclasses.asdict(ino))
    assert propagation.from_config_dict(full) == ino
    with pytest.raises(ValueError, match="unknown field"):
        propagation.from_config_dict({"topk": 3})
    with pytest.raises(ValueError, match="PropagationConfig.temperature"):
        propagation.from_config_dict({"preset": "dino", "temperature": 0.0})
    with pytest.raises(ValueError, match="preset"):
        propagation.from_config_dict({"preset": "stcn"})


def test_given_labels_may_be_jax_arrays_and_outputs_are_float32():
    prop = propagation.VideoPropagator(propagation.PRESETS["ino"], num_classes=2)
    frame = jnp.asarray(_canvas(6)[: GRID[0], : GRID[1]])
    labels0 = prop.labels_from_mask(np.kron(_boxes({1: BOXES[1]}), np.ones((8, 8), np.uint8)), GRID)
    outputs = list(prop.run([frame, frame], given={0: labels0}))
    assert outputs[1].dtype == jnp.float32 and outputs[1].shape == (*GRID, 2)
    np.testing.assert_array_equal(np.argmax(outputs[1], -1), _boxes({1: BOXES[1]}))


def test_readers_and_writers_of_the_presets():
    rng = np.random.default_rng(9)
    labels = rng.random((60, 104, 3)).astype(np.float32)
    frame = rng.integers(0, 256, (480, 854, 3), dtype=np.uint8)
    dino = propagation.VideoPropagator(propagation.PRESETS["dino"], 3)
    crw = propagation.VideoPropagator(propagation.PRESETS["crw"], 3)
    assert dino.reader_size((480, 854)) == (480, 832)
    assert dino.read_frame(frame).shape == (480, 832, 3)
    assert crw.reader_size((480, 854)) == (480, 856)
    np.testing.assert_array_equal(crw.read_frame(frame)[:, 854:], frame[:, 853:854].repeat(2, 1))
    # DINO: x8 to 480 x 832, norm_mask, argmax, PIL nearest to 480 x 854.
    on_grid = propagation.labels_to_mask(labels, (480, 832), normalize=True)
    want = np.asarray(Image.fromarray(on_grid).resize((854, 480), Image.NEAREST))
    np.testing.assert_array_equal(dino.to_mask(labels, (480, 854)), want)
    # upsample='frame': straight to the frame size (CRW's writer; vosjax's earlier DINO one).
    direct = propagation.VideoPropagator(
        dataclasses.replace(propagation.PRESETS["dino"], upsample="frame"), 3
    )
    straight = propagation.labels_to_mask(labels, (480, 854), normalize=True)
    np.testing.assert_array_equal(direct.to_mask(labels, (480, 854)), straight)
    assert (straight != want).sum() > 100
    np.testing.assert_array_equal(
        crw.to_mask(labels, (480, 854)), propagation.labels_to_mask(labels, (480, 854))
    )
