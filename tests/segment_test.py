"""Tests for `python -m vosjax.segment`: a user's video in, masks and overlays out."""

import functools
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from configs.maskvos import corr_r18, r18
from configs.propagation import lab_pixels
from configs.shls import davis2016_frames
from vosjax import checkpointing, evaluate, segment, train
from vosjax import main as main_lib
from vosjax.data import image_io, overlay_video, user_video
from vosjax.metrics import davis_protocol

H, W = 66, 90  # not multiples of 8 (nor of the mp4 codec's 2 in W): masks off the feature grid
NUM_FRAMES = 6
DAVIS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "DAVIS2016"


def _scene(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t (a textured square moving right 3 px a frame over texture) and its ids."""
    rng = np.random.default_rng(0)
    # Blocks of 6 px, not per-pixel noise: the mp4 codec and DINO's reader (which upscales
    # to a short side of 480) keep them.
    frame = np.kron(rng.integers(0, 256, (H // 6, W // 6, 3)), np.ones((6, 6, 1))).astype(np.uint8)
    square = np.kron(rng.integers(0, 256, (7, 7, 3)), np.ones((3, 3, 1)))[:21, :19].astype(np.uint8)
    y, x = 17, 13 + 3 * t
    frame[y : y + 21, x : x + 19] = square
    ids = np.zeros((H, W), np.uint8)
    ids[y : y + 21, x : x + 19] = 1
    return frame, ids


def _write_mp4(path: pathlib.Path, fps: float = 10.0) -> pathlib.Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    for t in range(NUM_FRAMES):
        writer.write(cv2.cvtColor(_scene(t)[0], cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _write_folder(folder: pathlib.Path, count: int = NUM_FRAMES) -> pathlib.Path:
    folder.mkdir()
    for t in range(count):
        Image.fromarray(_scene(t)[0]).save(folder / f"f{t:03d}.png")
    return folder


def _first_mask(path: pathlib.Path) -> pathlib.Path:
    image_io.write_mask(path, _scene(0)[1])
    return path


def _later_mask(path: pathlib.Path) -> pathlib.Path:
    """Object 2, given on frame 3: a blob over the lower right of object 1's square."""
    mask = np.zeros((H, W), np.uint8)
    mask[30:50, 30:57] = 2
    image_io.write_mask(path, mask)
    return path


def _read_video(path: pathlib.Path) -> tuple[int, tuple[int, int], float]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    count, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, frame.shape[:2]
    capture.release()
    return count, size, fps


def test_mp4_with_the_baseline_and_a_later_object(tmp_path):
    video = _write_mp4(tmp_path / "clip.mp4")
    first, later = _first_mask(tmp_path / "first.png"), _later_mask(tmp_path / "later.png")
    out = tmp_path / "out"
    outputs = segment.run(video, {0: first, 3: later}, out)
    names = [f"{t:05d}" for t in range(NUM_FRAMES)]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == names
    masks = [image_io.read_mask(out / "masks" / f"{n}.png") for n in names]
    with Image.open(out / "masks" / "00000.png") as image:
        assert image.mode == "P"
    np.testing.assert_array_equal(masks[0], image_io.read_mask(first))  # exactly as given
    given = image_io.read_mask(later)
    assert not (masks[1] == 2).any() and not (masks[2] == 2).any()
    np.testing.assert_array_equal(masks[3] == 2, given == 2)  # the new object exactly as given
    assert ((masks[3] == 1) & (given == 0)).sum() > 150  # object 1 kept outside it
    truth = _scene(2)[1] == 1  # tracked before object 2 comes
    iou = ((masks[2] == 1) & truth).sum() / ((masks[2] == 1) | truth).sum()
    assert iou > 0.6, iou
    assert _read_video(out / "overlay.mp4") == (NUM_FRAMES, (H, W), 10.0)
    with Image.open(out / "overlay.png") as image:
        sheet = np.asarray(image)
    assert outputs.overlay_sheet == out / "overlay.png"
    assert sheet.shape == (2 * H + 4, 4 * W + 3 * 4, 3)  # 6 frames: 4 + 2 thumbnails


def test_odd_size_overlay_is_padded(tmp_path):
    """The mp4 codec needs even sizes: an odd frame gets one edge row / column."""
    assert overlay_video.even_size((67, 101)) == (68, 102)
    with overlay_video.OverlayVideoWriter(tmp_path / "odd.mp4", 8, (67, 101)) as writer:
        for _ in range(3):
            writer.write(np.zeros((67, 101, 3), np.uint8), np.ones((67, 101), np.uint8))
    assert _read_video(tmp_path / "odd.mp4") == (3, (68, 102), 8.0)
    assert overlay_video.sheet_frames(100) == (0, 14, 28, 42, 57, 71, 85, 99)
    assert overlay_video.sheet_frames(3) == (0, 1, 2)


def test_a_propagation_config_without_workdir(tmp_path):
    folder = _write_folder(tmp_path / "frames", count=3)
    first = _first_mask(tmp_path / "first.png")
    crw = lab_pixels.get_config("crw")  # CRW's protocol outputs frame 0 from the grid ...
    segment.run(folder, {0: first}, tmp_path / "out", config=crw)
    written = image_io.read_mask(tmp_path / "out" / "masks" / "f000.png")
    np.testing.assert_array_equal(written, _scene(0)[1])  # ... the command the given mask
    with pytest.raises(segment.InputError, match="need --config, the training config"):
        segment.run(folder, {0: first}, tmp_path / "out2", config=crw, workdir="w")


class _Recorder:
    """A segmenter that outputs its given masks on frame 0 and object 1 everywhere after."""

    def __init__(self):
        self.sizes = []

    def segment(self, sequence):
        for t in range(len(sequence)):
            self.sizes.append(sequence.read_frame(t).shape[:2])
            yield sequence.read_mask(0) if t == 0 else np.ones(sequence.image_size, np.uint8)


def test_max_side_segments_small_and_writes_full_size(tmp_path):
    folder = _write_folder(tmp_path / "frames")
    video = user_video.load_user_video(folder, _first_mask(tmp_path / "m.png"))
    recorder = _Recorder()
    out = tmp_path / "out"
    segment.segment_video(video, recorder, out, fps=5, max_side=45)
    assert set(recorder.sizes) == {(33, 45)}
    for t in range(NUM_FRAMES):
        mask = image_io.read_mask(out / "masks" / f"f{t:03d}.png")
        assert mask.shape == (H, W)
        if t == 0:
            np.testing.assert_array_equal(mask, _scene(0)[1])  # the full-size given mask
        else:
            assert (mask == 1).all()
    assert _read_video(out / "overlay.mp4") == (NUM_FRAMES, (H, W), 5.0)


@pytest.fixture(scope="module")
def corr_workdir(tmp_path_factory):
    """A corr_r18:smoke run's workdir with the checkpoint of its initial state (step 0)."""
    workdir = tmp_path_factory.mktemp("corr_smoke")
    config = corr_r18.get_config("smoke")
    trainer = train.Trainer(config, main_lib.build_method(config))
    with checkpointing.Checkpointer(workdir / "checkpoints", handle_sigterm=False) as ckpt:
        ckpt.save(0, trainer.init_state())
    return workdir


def test_folder_with_a_checkpoint(tmp_path, corr_workdir):
    folder = _write_folder(tmp_path / "frames")
    first = _first_mask(tmp_path / "first.png")
    config = corr_r18.get_config("smoke")
    out = tmp_path / "out"
    segment.run(folder, {"f000": first}, out, config=config, workdir=str(corr_workdir))
    names = [f"f{t:03d}" for t in range(NUM_FRAMES)]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == names
    # CRW's protocol (this method's segmenter) rebuilds frame 0 from the stride-8 grid ...
    video = user_video.load_user_video(folder, first)
    segmenter, _ = segment.restored_segmenter(config, str(corr_workdir), None)
    raw = next(iter(segmenter.segment(video)))
    assert (raw != _scene(0)[1]).sum() > 20
    # ... the command writes the given mask.
    np.testing.assert_array_equal(image_io.read_mask(out / "masks" / "f000.png"), _scene(0)[1])
    assert _read_video(out / "overlay.mp4") == (NUM_FRAMES, (H, W), 24.0)


def _expect_error(tmp_path, match, names, video, masks, **kwargs):
    """Runs the command, expecting an error that names `names`, before any output."""
    out = tmp_path / "out_error"
    with pytest.raises((segment.InputError, image_io.DataError), match=match) as info:
        segment.run(video, masks, out, **kwargs)
    for name in names:
        assert str(name) in str(info.value), (name, str(info.value))
    assert not out.exists()


def test_bad_inputs_fail_before_any_work(tmp_path, corr_workdir):
    video = _write_mp4(tmp_path / "clip.mp4")
    first = _first_mask(tmp_path / "first.png")
    small = tmp_path / "small.png"
    image_io.write_mask(small, np.ones((H, W - 2), np.uint8))
    _expect_error(tmp_path, "differs from the frame size", [small, video], video, {0: small})
    empty = tmp_path / "empty.png"
    image_io.write_mask(empty, np.zeros((H, W), np.uint8))
    _expect_error(tmp_path, "holds no object", [empty], video, {0: empty})
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(3000))
    _expect_error(tmp_path, "unreadable video", [noise], noise, {0: first})
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _expect_error(tmp_path, "unreadable", [broken], video, {0: broken})
    _expect_error(tmp_path, "has 6 frames", [first, "0..5"], video, {6: first})
    error = functools.partial(_expect_error, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(segment.InputError, match="cannot create the output folder"):
        segment.run(video, {0: first}, blocker / "out")
    error("second mask for frame 00000", [first, small], video, {0: first, "00000": small})
    with pytest.raises(segment.InputError, match="two masks for frame 0"):
        segment.parse_masks([str(first), str(small)])
    smoke = corr_r18.get_config("smoke")
    run = str(corr_workdir)
    missing = tmp_path / "no_run"
    error("no checkpoint in", [missing], video, {0: first}, config=smoke, workdir=str(missing))
    error("of step 7", ["saved steps: [0]"], video, {0: first}, config=smoke, workdir=run, step=7)
    error("need --config", ["--workdir"], video, {0: first}, workdir=run)
    unknown = lab_pixels.get_config("dino")
    unknown.method = "mystery"
    error("config.method='mystery'", [], video, {0: first}, config=unknown, workdir=run)
    released = r18.get_config("smoke,code")
    assert released.eval.segmenter == "released"
    masks = {0: first, 3: _later_mask(tmp_path / "later.png")}
    late = ["{2: '00003'}"]
    error("--config.eval.segmenter=decoding", late, video, masks, config=released, workdir=run)
    shls = davis2016_frames.get_config()  # the released SHLS test loop: frame-0 objects only
    error("--config.eval.protocol=vosjax", late, video, masks, config=shls, workdir=run)


def test_parse_masks(tmp_path):
    assert segment.parse_masks(["m.png", "12:n.png", "f010:o.png", "00040:dir/p.png"]) == {
        0: pathlib.Path("m.png"),
        "12": pathlib.Path("n.png"),
        "f010": pathlib.Path("o.png"),
        "00040": pathlib.Path("dir/p.png"),
    }
    odd = tmp_path / "a:b.png"  # an existing file whose name holds ':' is frame 0's mask
    odd.write_bytes(b"")
    assert segment.parse_masks([str(odd)]) == {0: odd}
    assert segment.parse_masks(["/x/c:d.png"]) == {0: pathlib.Path("/x/c:d.png")}


def test_command_line(tmp_path):
    """The module runs as a command, prints where the outputs went, and exits 1 on bad input."""
    folder = _write_folder(tmp_path / "frames", count=3)
    first = _first_mask(tmp_path / "first.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vosjax.segment", f"--video={folder}", f"--out={out}"]
    done = subprocess.run(
        [*command, f"--mask={first}", "--fps=12"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"overlay video: {out / 'overlay.mp4'}" in done.stdout
    assert "frames/s" in done.stdout
    assert _read_video(out / "overlay.mp4") == (3, (H, W), 12.0)
    failed = subprocess.run(
        [*command, f"--mask=9:{first}"], capture_output=True, text=True, timeout=300
    )
    assert failed.returncode == 1 and f"error: {first}: given for frame 9, but" in failed.stderr


@pytest.mark.skipif(not DAVIS.is_dir(), reason="needs ../shared/data/DAVIS2016")
def test_same_j_and_f_as_evaluate_on_a_davis_sequence(tmp_path):
    """Segment's masks of 4 frames of blackswan score what vosjax.evaluate reports."""
    root = tmp_path / "davis"
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        folder = root / kind / "480p" / "blackswan"
        folder.mkdir(parents=True)
        for t in range(4):
            name = f"{t:05d}.{ext}"
            (folder / name).symlink_to(DAVIS / kind / "480p" / "blackswan" / name)
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("blackswan\n")
    frames, annotations = root / "JPEGImages/480p/blackswan", root / "Annotations/480p/blackswan"
    out = tmp_path / "out"
    segment.run(frames, {0: annotations / "00000.png"}, out)
    truth = np.stack([image_io.read_mask(annotations / f"{t:05d}.png") for t in range(4)])
    pred = np.stack([image_io.read_mask(out / "masks" / f"{t:05d}.png") for t in range(4)])
    scores = davis_protocol.evaluate_sequence(truth, pred, "blackswan")
    ours = davis_protocol.summarize({f"blackswan_{k}": v for k, v in scores.items()})
    config = lab_pixels.get_config("dino")
    config.data.davis_root, config.data.imageset = str(root), "2016/val"
    theirs = evaluate.run(config, str(tmp_path / "work"))
    assert ours["J&F-Mean"] == theirs["J&F-Mean"]
    assert ours["J&F-Mean"] > 0.8
