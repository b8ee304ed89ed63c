"""keras_retina.pretrained.pth: reading torch.save state dicts without torch, safely.

Files are written by tests/pth_files.py in torch's own layouts (and, where torch
is importable, by torch itself).
"""

import ast
import collections
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pth_files as pf
import pytest

from keras_retina.pretrained import pth
from keras_retina.pretrained.pth import CheckpointError, UnsafeCheckpointError, read_pth, write_pth

LAYOUTS = {"zip": pf.write_zip, "legacy": pf.write_legacy}


def _write(layout, path, obj):
    LAYOUTS[layout](path, obj)
    return path


def _mixed_state_dict():
    """Tensors of several dtypes and shapes, views and a shared storage, as pf objects."""
    rng = np.random.default_rng(0)
    shared = pf.Storage(rng.standard_normal(24).astype("float32"))
    obj = collections.OrderedDict()
    obj["backbone.conv1.weight"] = pf.tensor(rng.standard_normal((4, 3, 3, 3)).astype("float32"))
    obj["head.bias"] = pf.tensor(rng.standard_normal(5).astype("float16"))
    obj["bn.num_batches_tracked"] = pf.tensor(np.array(12345678901, "int64"))  # 0-d
    obj["mask"] = pf.tensor(np.array([True, False, True, True]))
    obj["flag"] = pf.tensor(np.array(True))  # 0-d bool
    obj["pixels"] = pf.tensor(np.array([[0, 7, 255]], "uint8"))
    obj["double"] = pf.tensor(np.array([1.0 / 3.0, -2.5]))
    obj["small_ints"] = pf.tensor(np.array([-128, 0, 127], "int8"))
    # Two views of one storage: a transposed (non-contiguous) block with an offset, and a row.
    obj["view.transposed"] = pf.Tensor(shared, shape=(3, 2), stride=(1, 6), offset=7)
    obj["view.row"] = pf.Tensor(shared, shape=(6,), offset=18)
    obj["empty"] = pf.tensor(np.zeros((0, 3), "float32"))
    obj["param"] = pf.Tensor(pf.Storage(np.array([1.5, 2.5], "float32")), (2,), parameter=True)
    obj._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
    return obj


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_round_trip_dtypes_shapes_views_and_order(tmp_path, layout):
    obj = _mixed_state_dict()
    arrays = read_pth(_write(layout, tmp_path / "model.pth", obj))
    assert list(arrays) == list(obj)
    for name, tensor in obj.items():
        want = tensor.expected()
        np.testing.assert_array_equal(arrays[name], want, err_msg=name)
        assert arrays[name].dtype == want.dtype, name
        assert arrays[name].shape == want.shape, name
        assert arrays[name].flags.c_contiguous and arrays[name].flags.writeable, name
    assert arrays["bn.num_batches_tracked"].shape == () and arrays["bn.num_batches_tracked"] == 12345678901
    by_hand = obj["view.transposed"].storage.data[7:19].reshape(2, 6)[:, :3].T  # [i, j] = data[7 + i + 6 j]
    np.testing.assert_array_equal(arrays["view.transposed"], by_hand)
    # The arrays are copies: writing one does not change its storage-sharing sibling.
    arrays["view.transposed"][...] = 0
    assert np.all(arrays["view.row"] != 0)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_non_tensor_entries_are_skipped(tmp_path, layout):
    obj = collections.OrderedDict(epoch=3, name="retinanet", weight=pf.tensor(np.ones(2, "float32")), nothing=None)
    assert list(read_pth(_write(layout, tmp_path / "m.pth", obj))) == ["weight"]


def test_bfloat16_is_widened_to_float32_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 2.0**100, 0.0], "float32")
    bits = (values.view("uint32") >> 16).astype("uint16")  # exact: every value fits in bfloat16
    obj = {"w": pf.Tensor(pf.Storage(bits, storage_name="BFloat16Storage"), (5,))}
    obj["scalar"] = pf.Tensor(obj["w"].storage, (), offset=1)
    out = read_pth(_write("zip", tmp_path / "bf16.pth", obj))
    assert out["w"].dtype == np.float32 and out["scalar"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], values)
    assert out["scalar"].shape == () and out["scalar"] == -2.5


def test_big_endian_zip_archive(tmp_path):
    obj = {"w": pf.tensor(np.arange(6, dtype="float32").reshape(2, 3)), "i": pf.tensor(np.array([-1, 2**40], "int64"))}
    pf.write_zip(tmp_path / "be.pth", obj, byteorder="big")
    out = read_pth(tmp_path / "be.pth")
    np.testing.assert_array_equal(out["w"], np.arange(6, dtype="float32").reshape(2, 3))
    np.testing.assert_array_equal(out["i"], [-1, 2**40])
    assert out["w"].dtype == np.dtype("float32")  # native order, not >f4


def test_any_archive_prefix(tmp_path):
    pf.write_zip(tmp_path / "m.pth", {"w": pf.tensor(np.ones(3, "float32"))}, prefix="retinanet_resnet50_fpn_coco")
    np.testing.assert_array_equal(read_pth(str(tmp_path / "m.pth"))["w"], np.ones(3))


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_wrapper_with_one_state_dict_is_unwrapped(tmp_path, key):
    inner = pf.state_dict({"a": np.ones(2, "float32"), "b": np.arange(3)})
    obj = {key: inner, "epoch": 7, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    arrays = read_pth(_write("zip", tmp_path / "ckpt.pth", obj))
    assert list(arrays) == ["a", "b"]
    np.testing.assert_array_equal(arrays["b"], [0, 1, 2])


def test_two_state_dicts_in_a_wrapper_are_ambiguous(tmp_path):
    obj = {"model": pf.state_dict({"a": np.ones(1, "float32")}), "ema": pf.state_dict({"a": np.ones(1, "float32")})}
    path = _write("zip", tmp_path / "ckpt.pth", obj)
    with pytest.raises(CheckpointError, match=r"ckpt\.pth: no tensors .* 2 dict values holding tensors "
                                              r"\('model', 'ema'\)"):
        read_pth(path)


def test_dict_without_tensors_lists_what_it_holds(tmp_path):
    path = _write("legacy", tmp_path / "opt.pth", {"epoch": 3, "optimizer": {"lr": 0.1}})
    with pytest.raises(CheckpointError, match=r"opt\.pth: no tensors in the top-level dict \{'epoch': int 3, "
                                              r"'optimizer': a dict of length 1\}, and no dict value holding tensors"):
        read_pth(path)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_top_level_list_is_refused_clearly(tmp_path, layout):
    path = _write(layout, tmp_path / "list.pth", [pf.tensor(np.ones(2, "float32"))])
    with pytest.raises(CheckpointError, match=r"list\.pth: the checkpoint holds a list of length 1, expected a dict"):
        read_pth(path)


class _Payload:
    """Unpickles as ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _malicious_pickle(target):
    return pickle.dumps(_Payload(f"touch {target}"))


def test_malicious_payload_would_run_under_plain_pickle(tmp_path):
    # The control: the payload the next tests refuse does run under pickle.loads.
    pickle.loads(_malicious_pickle(tmp_path / "control"))
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize("where", ["zip", "legacy", "legacy_first_pickle"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, where):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = _malicious_pickle(target)
    if where == "zip":
        pf.write_zip(path, data_pkl=payload)
    elif where == "legacy":
        pf.write_legacy(path, main_pkl=payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError) as raised:
        read_pth(path)
    message = str(raised.value)
    assert f"{os.system.__module__}.system" in message  # posix.system on Linux
    assert str(path) in message and "not imported or run" in message
    assert isinstance(raised.value, ValueError)
    assert not target.exists()


def test_globals_torch_writes_only_for_code_are_refused(tmp_path):
    # A pickled nn.Module names its class; a state dict never does.
    pickled = pf.dumps(collections.OrderedDict(net=pf.torch_global("torch.nn.modules.conv", "Conv2d")))[0]
    pf.write_zip(tmp_path / "module.pth", data_pkl=pickled)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.conv\.Conv2d"):
        read_pth(tmp_path / "module.pth")


def test_persistent_ids_other_than_storages_are_refused(tmp_path):
    obj = {"w": pf.RawPersistentId(("module", "Net", "net.py", "import os"))}
    pf.write_zip(tmp_path / "pid.pth", data_pkl=pf.dumps(obj)[0])
    with pytest.raises(CheckpointError, match=r"pid\.pth: refused the persistent id \('module'"):
        read_pth(tmp_path / "pid.pth")


def test_zip_storage_declaring_more_elements_than_present(tmp_path):
    storage = pf.Storage(np.ones(4, "float32"), numel=10**12)
    pf.write_zip(tmp_path / "huge.pth", {"w": pf.Tensor(storage, (10**6, 10**6))})
    with pytest.raises(CheckpointError, match=r"huge\.pth: storage '0' declares 1000000000000 elements .*"
                                              r"\(4000000000000 bytes\) but entry archive/data/0 holds 16 bytes"):
        read_pth(tmp_path / "huge.pth")


def test_legacy_storage_claiming_more_bytes_than_the_file_holds(tmp_path):
    storage = pf.Storage(np.ones(4, "float32"), numel=10**12, record_count=10**12)
    pf.write_legacy(tmp_path / "huge.pth", {"w": pf.Tensor(storage, (10**12,))})
    with pytest.raises(CheckpointError, match=r"huge\.pth: storage '\d+' holds 1000000000000 elements .*"
                                              r"\(4000000000000 bytes\) but only 16 bytes remain"):
        read_pth(tmp_path / "huge.pth")


def test_legacy_record_count_must_match_the_declaration(tmp_path):
    storage = pf.Storage(np.ones(4, "float32"), record_count=3)
    pf.write_legacy(tmp_path / "m.pth", {"w": pf.Tensor(storage, (3,))})
    with pytest.raises(CheckpointError, match=r"declared with 4 elements but its record has 3"):
        read_pth(tmp_path / "m.pth")


def test_zip_storage_entry_shorter_than_declared(tmp_path):
    pf.write_zip(tmp_path / "short.pth", {"w": pf.tensor(np.ones(4, "float32"))}, storage_sizes={"0": 12})
    with pytest.raises(CheckpointError, match=r"storage '0' declares 4 elements .*\(16 bytes\).* holds 12 bytes"):
        read_pth(tmp_path / "short.pth")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize(
    "shape, stride, offset, reach",
    [((5,), (1,), 0, 4), ((2, 2), (2, 1), 1, 4), ((3,), (2,), 0, 4), ((1,), (1,), 4, 4)],
)
def test_tensor_reaching_past_its_storage_is_refused(tmp_path, layout, shape, stride, offset, reach):
    storage = pf.Storage(np.arange(4, dtype="float32"))
    path = _write(layout, tmp_path / "past.pth", {"ok": pf.tensor(np.ones(1, "float32")),
                                                  "bad": pf.Tensor(storage, shape, stride, offset)})
    with pytest.raises(CheckpointError, match=rf"past\.pth: tensor 'bad': .* reach element {reach} but its storage "
                                              rf"'\d+' holds 4 elements"):
        read_pth(path)


def test_broadcast_view_larger_than_its_storage_is_refused(tmp_path):
    storage = pf.Storage(np.ones(1, "float32"))
    pf.write_zip(tmp_path / "b.pth", {"w": pf.Tensor(storage, (10**6, 10**6), (0, 0))})
    with pytest.raises(CheckpointError, match=r"tensor 'w': 1000000000000 elements from a storage of 1"):
        read_pth(tmp_path / "b.pth")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth"):
        read_pth(tmp_path / "nothere.pth")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"not a PyTorch checkpoint: neither a zip archive nor a legacy"),
        (b"\x89PNG\r\n\x1a\n not a checkpoint", r"not a PyTorch checkpoint: neither a zip archive nor a legacy"),
        (pickle.dumps({"w": 1}), r"not a PyTorch checkpoint: its first pickle is a dict of length 1"),
        (b"PK\x03\x04 truncated zip", r"a broken zip archive"),
    ],
)
def test_not_a_checkpoint_names_the_path(tmp_path, content, match):
    (tmp_path / "junk.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"junk\.pth: " + match):
        read_pth(tmp_path / "junk.pth")


def test_zip_without_data_pkl(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("weights/params.npy", b"123")
    with pytest.raises(CheckpointError, match=r"other\.zip: a zip archive but not a torch\.save checkpoint"):
        read_pth(tmp_path / "other.zip")


def test_compressed_storage_entry_is_refused(tmp_path):
    pickled, _ = pf.dumps({"w": pf.tensor(np.zeros(1000, "float32"))})
    with zipfile.ZipFile(tmp_path / "deflated.pth", "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/data/0", bytes(4000), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match=r"entry archive/data/0 is compressed"):
        read_pth(tmp_path / "deflated.pth")


def test_truncated_legacy_file(tmp_path):
    pf.write_legacy(tmp_path / "t.pth", {"w": pf.tensor(np.ones(8, "float32"))})
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[:-5])
    with pytest.raises(CheckpointError, match=r"t\.pth: storage '\d+' holds 8 elements .*\(32 bytes\) but only 27"):
        read_pth(tmp_path / "t.pth")


def test_write_pth_round_trip(tmp_path):
    arrays = {
        "conv.weight": np.arange(2 * 3 * 3 * 3, dtype="float32").reshape(2, 3, 3, 3),
        "x.transposed": np.arange(6, dtype="float64").reshape(2, 3).T,  # written contiguous
        "half": np.array([0.5, 1e-3], "float16"),
        "count": np.array(3, "int64"),
        "flags": np.array([True, False]),
        "bytes": np.array([1, 255], "uint8"),
        "empty": np.zeros((2, 0), "int32"),
    }
    write_pth(tmp_path / "w.pth", arrays)
    out = read_pth(tmp_path / "w.pth")
    assert list(out) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(out[name], array, err_msg=name)
        assert out[name].dtype == array.dtype and out[name].shape == array.shape, name
    # Storage records start on 64-byte boundaries, as torch aligns them.
    with zipfile.ZipFile(tmp_path / "w.pth") as archive:
        raw = (tmp_path / "w.pth").read_bytes()
        for info in archive.infolist():
            name_len, extra_len = np.frombuffer(raw[info.header_offset + 26 : info.header_offset + 30], "<u2")
            assert (info.header_offset + 30 + int(name_len) + int(extra_len)) % 64 == 0, info.filename


def test_write_pth_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"array 'names' has dtype <U1"):
        write_pth(tmp_path / "w.pth", {"names": np.array(["a"])})
    with pytest.raises(ValueError, match=r"names must be str, got 3"):
        write_pth(tmp_path / "w.pth", {3: np.ones(1)})


def test_module_never_imports_torch():
    tree = ast.parse(open(pth.__file__).read())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert "numpy" in imported and not [name for name in imported if name.split(".")[0] in ("torch", "torchvision")]
    assert "__import__" not in open(pth.__file__).read()


# -------------------------- against torch itself, where it is installed (not in CI)
# torch runs in a child process: importing it into a process that has loaded
# TensorFlow crashes (both bundle native libraries), and the suite has.
requires_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


def _torch(tmp_path, code):
    """Runs ``code`` with torch and numpy imported, in ``tmp_path``, in a child process."""
    script = "import json, collections, numpy as np, torch\n" + textwrap.dedent(code)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=300)


_TORCH_STATE = """
generator = torch.Generator().manual_seed(0)
base = torch.randn(5, 8, generator=generator)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
state = net.state_dict()  # has _metadata and a 0-d int64 num_batches_tracked
state["f16"] = torch.randn(3, 2, generator=generator).half()
state["f64"] = torch.randn(4, generator=generator).double()
state["bf16"] = torch.randn(6, generator=generator).bfloat16()
state["i32"] = torch.randint(-1000, 1000, (2, 3), dtype=torch.int32, generator=generator)
state["i8"] = torch.randint(-128, 127, (5,), dtype=torch.int8, generator=generator)
state["u8"] = torch.randint(0, 255, (5,), dtype=torch.uint8, generator=generator)
state["bool"] = torch.rand(7, generator=generator) > 0.5
state["scalar"] = torch.tensor(2.5)
state["view.t"] = base[1:, ::3].t()  # non-contiguous, offset into a shared storage
state["view.row"] = base[4]
assert not state["view.t"].is_contiguous()
"""


def _load_expected(path):
    with np.load(path) as expected:
        return {name: expected[name] for name in json.load(open(str(path) + ".order.json"))}


@requires_torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_saves(tmp_path, zip_format):
    _torch(tmp_path, _TORCH_STATE + f"""
torch.save(state, "t.pth", _use_new_zipfile_serialization={zip_format})
expected = {{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}}
np.savez("expected.npz", **expected)
json.dump(list(state), open("expected.npz.order.json", "w"))
""")
    expected = _load_expected(tmp_path / "expected.npz")
    arrays = read_pth(tmp_path / "t.pth")
    assert list(arrays) == list(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(arrays[name], want, err_msg=name)
        assert arrays[name].dtype == want.dtype and arrays[name].shape == want.shape, name


@requires_torch
def test_torch_loads_what_write_pth_writes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype("float32"),
        "f16": rng.standard_normal((3, 2)).astype("float16"),
        "f64": rng.standard_normal(4),
        "i32": rng.integers(-1000, 1000, (2, 3)).astype("int32"),
        "i8": rng.integers(-128, 127, 5).astype("int8"),
        "u8": rng.integers(0, 255, 5).astype("uint8"),
        "bool": rng.random(7) > 0.5,
        "scalar": np.array(2.5, "float32"),
        "count": np.array(7, "int64"),
    }
    write_pth(tmp_path / "w.pth", arrays)
    _torch(tmp_path, """
for i, kwargs in enumerate(({"weights_only": True}, {"weights_only": True, "mmap": True})):
    loaded = torch.load("w.pth", **kwargs)
    np.savez(f"loaded{i}.npz", **{k: v.numpy() for k, v in loaded.items()})
    json.dump(list(loaded), open(f"loaded{i}.npz.order.json", "w"))
""")
    for i in range(2):
        loaded = _load_expected(tmp_path / f"loaded{i}.npz")
        assert list(loaded) == list(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array, err_msg=name)
            assert loaded[name].dtype == array.dtype, name


@requires_torch
def test_test_writer_writes_what_torch_writes(tmp_path):
    weight, count = np.arange(6, dtype="float32").reshape(2, 3), np.array(4, "int64")
    pf.write_zip(tmp_path / "p.pth", pf.state_dict({"weight": weight, "count": count}), prefix="t")
    for layout in LAYOUTS:
        _write(layout, tmp_path / f"{layout}.pth", _mixed_state_dict())
    _torch(tmp_path, """
weight, count = np.arange(6, dtype="float32").reshape(2, 3), np.array(4, "int64")
state = collections.OrderedDict(weight=torch.from_numpy(weight), count=torch.from_numpy(count))
state._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
torch.save(state, "t.pth")
for layout in ("zip", "legacy"):
    np.save(f"{layout}_view.npy", torch.load(f"{layout}.pth", weights_only=True)["view.transposed"].numpy())
""")
    with zipfile.ZipFile(tmp_path / "t.pth") as theirs, zipfile.ZipFile(tmp_path / "p.pth") as ours:
        assert ours.namelist() == theirs.namelist()
        assert ours.read("t/data.pkl") == theirs.read("t/data.pkl")
    want = _mixed_state_dict()["view.transposed"].expected()
    for layout in LAYOUTS:
        np.testing.assert_array_equal(np.load(tmp_path / f"{layout}_view.npy"), want)
