"""Writes ``.pth`` files exactly as ``torch.save`` does, without torch, for the reader's tests.

Independent of ``keras_retina.pretrained.pth`` (which has its own writer) so
that a bug shared by the library's reader and writer cannot hide. Both of
torch's layouts, with the same zip entry names, pickle protocol 2, GLOBAL
opcodes (``collections OrderedDict``, ``torch._utils _rebuild_tensor_v2``,
``torch FloatStorage``...) and persistent ids as torch 2.x writes them; only the
pure-Python ``pickle._Pickler`` is taught to write torch's globals without
importing torch.

A file is described by plain Python objects: :class:`Storage` (a flat array of
elements) and :class:`Tensor` (a view of one: offset, shape, strides in
elements) inside dicts, lists and ints.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}

_globals: dict[tuple[str, str], type] = {}


def torch_global(module: str, name: str) -> type:
    """A stand-in class that pickles as the GLOBAL ``module name`` (one per name, so memoized)."""
    if (module, name) not in _globals:
        _globals[(module, name)] = type(name, (), {"torch_global": (module, name)})
    return _globals[(module, name)]


REBUILD_TENSOR_V2 = torch_global("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = torch_global("torch._utils", "_rebuild_parameter")


@dataclasses.dataclass(eq=False)
class Storage:
    """A storage: ``data`` is its elements; ``numel`` is what the persistent id declares.

    ``storage_name`` overrides the class (e.g. ``"BFloat16Storage"`` over uint16 bits);
    ``record_count`` overrides the legacy record's element count.
    """

    data: np.ndarray
    numel: int | None = None
    storage_name: str | None = None
    record_count: int | None = None

    def __post_init__(self):
        self.data = np.ascontiguousarray(self.data).reshape(-1)
        if self.numel is None:
            self.numel = self.data.size
        if self.storage_name is None:
            self.storage_name = STORAGE_NAMES[self.data.dtype]

    def raw(self, byteorder: str = "little") -> bytes:
        order = "<" if byteorder == "little" else ">"
        return self.data.astype(self.data.dtype.newbyteorder(order)).tobytes()


@dataclasses.dataclass(eq=False)
class Tensor:
    """``storage`` viewed at ``offset`` with ``shape`` and ``stride`` (elements; contiguous if None)."""

    storage: Storage
    shape: tuple
    stride: tuple | None = None
    offset: int = 0
    parameter: bool = False  # pickled as torch.nn.Parameter (state_dict(keep_vars=True))

    def __post_init__(self):
        if self.stride is None:
            stride, step = [], 1
            for n in reversed(self.shape):
                stride.append(step)
                step *= max(n, 1)
            self.stride = tuple(reversed(stride))

    def __reduce__(self):
        args = (self.storage, self.offset, tuple(self.shape), tuple(self.stride), False, collections.OrderedDict())
        if self.parameter:
            inner = Tensor(self.storage, self.shape, self.stride, self.offset)
            return (REBUILD_PARAMETER, (inner, True, collections.OrderedDict()))
        return (REBUILD_TENSOR_V2, args)

    def expected(self) -> np.ndarray:
        """The array torch would load: the view, copied."""
        data = self.storage.data
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], self.shape, [s * data.itemsize for s in self.stride], writeable=False
        )
        return np.array(view)


def tensor(array) -> Tensor:
    """A contiguous tensor with a storage of its own."""
    array = np.asarray(array)
    return Tensor(Storage(array.reshape(-1)), array.shape)


def state_dict(arrays: dict, metadata: bool = True) -> collections.OrderedDict:
    """An OrderedDict of tensors with the ``_metadata`` attribute torch's ``state_dict()`` sets."""
    result = collections.OrderedDict((name, tensor(array)) for name, array in arrays.items())
    if metadata:
        result._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
    return result


class RawPersistentId(tuple):
    """Pickled as the persistent id it holds (to write ids torch would never write)."""


class _TorchPickler(pickle._Pickler):
    """Pickles like torch.save: protocol 2, storages as persistent ids, torch globals by name."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}  # key -> storage, in order of first use
        self._keys: dict[int, str] = {}

    def persistent_id(self, obj):
        if isinstance(obj, RawPersistentId):
            return tuple(obj)
        if not isinstance(obj, Storage):
            return None
        if id(obj) not in self._keys:
            # zip: "0", "1", ...; legacy: str(storage._cdata), an address.
            key = str(len(self._keys)) if not self.legacy else str(94_000_000_000_000 - 4096 * len(self._keys))
            self._keys[id(obj)] = key
            self.storages[key] = obj
        pid = ("storage", torch_global("torch", obj.storage_name), self._keys[id(obj)], "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid

    def save_global(self, obj, name=None):
        if hasattr(obj, "torch_global"):
            module, name = obj.torch_global
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dumps(obj, legacy: bool = False) -> tuple[bytes, dict[str, Storage]]:
    """The pickle torch.save writes for ``obj`` and the storages it refers to, by key."""
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, legacy)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.storages


def write_zip(path, obj=None, *, data_pkl: bytes | None = None, prefix: str = "archive", byteorder: str = "little",
              storage_sizes: dict[str, int] | None = None) -> None:
    """Writes ``obj`` in torch's zip layout (``data_pkl`` replaces the pickle, e.g. a malicious one).

    ``storage_sizes`` truncates or pads storage entries to the given byte counts.
    """
    storages = {}
    if data_pkl is None:
        data_pkl, storages = dumps(obj)
    records = [("data.pkl", data_pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", byteorder.encode())]
    for key, storage in storages.items():
        raw = storage.raw(byteorder)
        if storage_sizes and key in storage_sizes:
            raw = (raw + bytes(storage_sizes[key]))[: storage_sizes[key]]
        records.append((f"data/{key}", raw))
    records += [("version", b"3\n"), (".data/serialization_id", b"0123456789" * 4)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in records:
            archive.writestr(f"{prefix}/{name}", data)


def write_legacy(path, obj=None, *, main_pkl: bytes | None = None) -> None:
    """Writes ``obj`` in torch's legacy layout (``_use_new_zipfile_serialization=False``)."""
    storages = {}
    if main_pkl is None:
        main_pkl, storages = dumps(obj, legacy=True)
    sys_info = dict(protocol_version=PROTOCOL_VERSION, little_endian=True, type_sizes=dict(short=2, int=4, long=4))
    with open(path, "wb") as file:
        for value in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info):
            pickle.dump(value, file, protocol=2)
        file.write(main_pkl)
        keys = sorted(storages)
        pickle.dump(keys, file, protocol=2)
        for key in keys:
            storage = storages[key]
            count = storage.numel if storage.record_count is None else storage.record_count
            file.write(struct.pack("<q", count))
            file.write(storage.raw())
