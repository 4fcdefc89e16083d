"""The PyTorch checkpoint reader on files that real PyTorch wrote (tests/weights/data/)."""

import argparse
import collections
import io
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from vosjax.weights import torch_file

DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def saved():
    return torch_file.read(DATA / "tensors.pth")


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "tensors_expected.npz") as f:
        return {k: f[k] for k in f.files}


def _lookup(tree, path):
    for key in path.split("/"):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


def test_every_tensor_equals_what_pytorch_gives(saved, expected):
    assert len(expected) == 19
    for name, want in expected.items():
        got = _lookup(saved, name)
        assert isinstance(got, np.ndarray), name
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_dtypes_strides_and_storages(saved):
    assert saved["f16"].dtype == np.float16
    # bfloat16 (numpy has none) -> float32, exactly.
    assert saved["bf16"].dtype == np.float32
    np.testing.assert_array_equal(saved["bf16"], [1.0, -2.5, 3.140625, 0.00099945068359375, 65280])
    assert saved["i64"][2] == 2**40 + 3 and saved["i64"][3] == -(2**35)
    np.testing.assert_array_equal(saved["u16"], [0, 40000, 65535])  # torch's _rebuild_tensor_v3
    assert saved["u16"].dtype == np.uint16
    assert saved["bool"].dtype == np.bool_ and saved["scalar"].shape == ()
    assert saved["num_batches_tracked"].dtype == np.int64 and saved["num_batches_tracked"] == 7
    assert saved["empty"].shape == (0, 4)
    base = np.arange(40, dtype=np.float32).reshape(5, 8) / 8
    np.testing.assert_array_equal(saved["transposed"], base.T)
    assert saved["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(saved["offset_view"], base[1:4, 2:7:2])
    # Two tensors of one storage: the same values, but independent arrays.
    np.testing.assert_array_equal(saved["shared_row"], saved["shared_full"][2])
    assert not np.shares_memory(saved["shared_row"], saved["shared_full"])
    assert saved["param"].shape == (2, 2)


def test_python_objects(saved):
    assert saved["args"] == argparse.Namespace(arch="vit_small", patch_size=8, lr=5e-4, layers=[7])
    module = saved["module"]
    assert isinstance(module, collections.OrderedDict) and list(module) == ["weight", "bias"]
    assert module._metadata == collections.OrderedDict([("", {"version": 1})])
    assert saved["np_float"] == np.float64(0.675) and isinstance(saved["np_float"], np.float64)
    assert saved["np_int"] == 12 and isinstance(saved["np_int"], np.int64)
    np.testing.assert_array_equal(saved["np_array"], np.arange(6, dtype=np.int32).reshape(2, 3))
    assert saved["nested"]["list"][1:] == [1, "a"]
    assert saved["nested"]["betas"] == (0.9, 0.999) and saved["nested"]["none"] is None


def test_big_endian_file(expected):
    saved = torch_file.read(DATA / "big_endian.pth")
    assert sorted(saved) == ["f32", "offset", "transposed"]
    for name, key in (("f32", "f32"), ("transposed", "transposed"), ("offset", "offset_view")):
        assert saved[name].dtype == np.dtype("float32") and saved[name].dtype.isnative
        np.testing.assert_array_equal(saved[name], expected[key])


def _torch_zip(path: pathlib.Path, payload: bytes) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
    return path


def test_refuses_to_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = _torch_zip(tmp_path / "evil.pth", pickle.dumps({"w": Exploit()}, protocol=2))
    with pytest.raises(
        torch_file.TorchFileError, match=r"evil\.pth: refusing to unpickle (posix|os)\.system"
    ):
        torch_file.read(path)
    assert not marker.exists()


def test_refuses_unknown_classes(tmp_path):
    import datetime

    path = _torch_zip(tmp_path / "dated.pth", pickle.dumps({"when": datetime.date(2024, 1, 2)}, 2))
    with pytest.raises(torch_file.TorchFileError, match=r"dated\.pth.*datetime\.date"):
        torch_file.read(path)


def test_legacy_format_needs_pytorch():
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(
            torch_file.TorchFileError, match=r"legacy\.pth.*pip install -e \.\[torch\]"
        ):
            torch_file.read(DATA / "legacy.pth")
    else:
        saved = torch_file.read(DATA / "legacy.pth")
        np.testing.assert_array_equal(saved["n"], [1, 2])


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        torch_file.read(tmp_path / "nowhere.pth")
    plain = tmp_path / "plain.pth"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(torch_file.TorchFileError, match=r"plain\.pth.*data\.pkl"):
        torch_file.read(plain)
    script = tmp_path / "script.pt"
    with zipfile.ZipFile(script, "w") as archive:
        archive.writestr("script/constants.pkl", b"")
        archive.writestr("script/code/__torch__.py", "")
    with pytest.raises(torch_file.TorchFileError, match="TorchScript"):
        torch_file.read(script)


def test_truncated_storage(tmp_path):
    source = DATA / "tensors.pth"
    damaged = tmp_path / "damaged.pth"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(damaged, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data/0"):
                data = data[:-4]
            dst.writestr(info, data)
    with pytest.raises(torch_file.TorchFileError, match=r"damaged\.pth: storage .*data/0 holds"):
        torch_file.read(damaged)


def test_npz_state_dict(tmp_path):
    arrays = {"b.weight": np.ones((2, 3), np.float32), "a.bias": np.arange(3)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (tmp_path / "sd.npz").write_bytes(buffer.getvalue())
    saved = torch_file.read(tmp_path / "sd.npz")
    assert list(saved) == ["b.weight", "a.bias"]
    np.testing.assert_array_equal(saved["a.bias"], arrays["a.bias"])
