"""Reads (and writes) PyTorch ``.pth`` state dicts with NumPy alone: no torch, no code run.

:func:`read_pth` reads what ``torch.save(model.state_dict(), path)`` writes, as
torchvision publishes its weights (e.g. ``retinanet_resnet50_fpn_coco-eeacb38b.pth``),
in both of torch's layouts:

- zip (torch >= 1.6, the default): an archive ``<prefix>/data.pkl`` (the pickled
  dict), ``<prefix>/data/<key>`` (each storage's raw bytes, uncompressed),
  ``<prefix>/byteorder`` (``little`` or ``big``; absent means little),
  ``<prefix>/version`` and a few more small records;
- legacy (``_use_new_zipfile_serialization=False``, and every file before
  torch 1.6): five pickles in a row (the magic number ``0x1950a86a20f9469cfc6c``,
  the protocol version 1001, a dict of system info, the dict itself, the sorted
  list of storage keys) and then, per key, an int64 element count and the
  storage's raw little-endian bytes.

A checkpoint downloaded from the internet must not be able to run code, which
``pickle.load`` (and ``torch.load(weights_only=False)``) allows: a pickle may name
any importable function and call it. Here every pickle is read by an unpickler
that knows only the names torch writes into a state dict (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and its older or Parameter-wrapping
siblings, and the storage classes such as ``torch.FloatStorage``), each mapped
to a local marker; torch itself is never imported. Any other name raises
:class:`UnsafeCheckpointError` before anything is called.

Nothing read from the file makes this module allocate more than the file holds:
every storage's declared size is checked against the bytes present before it
is read, and every tensor's offset, shape and strides against its storage,
before an array is made. Bad files raise :class:`CheckpointError` naming the
file, the tensor and the numbers.

Written by hand: no dependency of this project reads ``.pth`` files (NumPy,
Keras and ``safetensors`` read other formats), and ``torch.load(weights_only=True)``
is safe but needs torch, which keras_retina does not depend on.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "read_pth", "write_pth"]

#: The first pickle of a legacy-format file (torch/serialization.py MAGIC_NUMBER).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: The second pickle of a legacy-format file (torch/serialization.py PROTOCOL_VERSION).
LEGACY_PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
#: Bytes between the starts of storage records in torch's zip files.
_STORAGE_ALIGNMENT = 64


class CheckpointError(ValueError):
    """A file that is not a readable PyTorch state dict, or one whose sizes do not add up."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle names a global that a state dict never needs; it was refused, not run."""


class _StorageType:
    """Stands in for a torch storage class such as ``torch.FloatStorage``."""

    def __init__(self, qualified_name: str, dtype: str):
        self.name = qualified_name  # e.g. "torch.FloatStorage"
        # Little-endian file dtype; bfloat16 is read as its raw uint16 bits.
        self.file_dtype = np.dtype(dtype)
        self.is_bfloat16 = qualified_name.endswith("BFloat16Storage")
        self.is_bool = qualified_name.endswith("BoolStorage")

    @property
    def itemsize(self) -> int:
        return self.file_dtype.itemsize

    def __repr__(self) -> str:
        return self.name


# Storage class name -> little-endian dtype of its elements in the file.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # converted to float32 on reading
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "u1",  # converted to bool on reading
    "ComplexFloatStorage": "<c8",
    "ComplexDoubleStorage": "<c16",
}

#: numpy dtype -> storage class name, for :func:`write_pth`.
_WRITE_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
    np.dtype("complex64"): "ComplexFloatStorage",
    np.dtype("complex128"): "ComplexDoubleStorage",
}


class _StorageRef:
    """A storage named by a persistent id: elements ``[start, start + numel)`` of storage ``key``."""

    __slots__ = ("key", "storage_type", "root_numel", "start", "numel")

    def __init__(self, key: str, storage_type: _StorageType, root_numel: int, start: int, numel: int):
        self.key = key
        self.storage_type = storage_type
        self.root_numel = root_numel
        self.start = start
        self.numel = numel


class _TensorRef:
    """What ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` rebuilds.

    Only the arguments are kept; they are checked and turned into an array
    once the storages' sizes are known (see ``_Reader._materialize``).
    """

    __slots__ = ("args",)

    def __init__(self, args: tuple):
        self.args = args

    def __setstate__(self, state):
        raise TypeError("a BUILD opcode targets a tensor; torch never writes that")


class _Reader:
    """Reads one checkpoint file; holds its path for error messages."""

    def __init__(self, path: str):
        self.path = path
        self.file_size = os.path.getsize(path)
        # Storage key -> (storage type, declared element count) from the persistent ids.
        self.declared: dict[str, tuple[_StorageType, int]] = {}
        self._allowed = self._allowed_globals()

    # -- the allow-list -------------------------------------------------------

    def _allowed_globals(self) -> dict[tuple[str, str], Any]:
        allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
        }
        for module in ("torch", "torch.cuda"):  # torch.cuda.*: old files saved on a GPU
            for name, dtype in _STORAGE_DTYPES.items():
                allowed[(module, name)] = _StorageType(f"{module}.{name}", dtype)
        return allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.path}: refused to load the global {module}.{name} named by its pickle; "
                "it was not imported or run. A state dict saved with torch.save needs only "
                "collections.OrderedDict, torch._utils._rebuild_tensor_v2 and storage classes "
                "such as torch.FloatStorage."
            ) from None

    def _rebuild_tensor_v2(self, *args):
        # (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if not 6 <= len(args) <= 7:
            raise CheckpointError(
                f"{self.path}: torch._utils._rebuild_tensor_v2 called with {len(args)} arguments, "
                "expected 6 or 7"
            )
        return _TensorRef(args[:4])

    def _rebuild_tensor(self, *args):
        # (storage, storage_offset, size, stride): files from torch < 1.0
        if len(args) != 4:
            raise CheckpointError(
                f"{self.path}: torch._utils._rebuild_tensor called with {len(args)} arguments, expected 4"
            )
        return _TensorRef(args)

    def _rebuild_parameter(self, data, *unused_args):
        # A Parameter wraps its tensor: (data, requires_grad, backward_hooks[, state]).
        return data

    # -- unpickling -----------------------------------------------------------

    def unpickle(self, data_file, where: str, persistent_load=None) -> Any:
        """Unpickles one pickle from ``data_file`` through the allow-list."""
        reader = self

        # The pure-Python unpickler, not the C one: the C one allocates the length a BINBYTES or
        # BYTEARRAY8 opcode declares before reading (a 1 KB pickle can ask for gigabytes), while this
        # one reads what the stream holds and only then finds it truncated. A state dict's pickle
        # holds names and shapes, not tensor bytes, so the slower unpickler costs little.
        class _Unpickler(pickle._Unpickler):
            def find_class(self, module, name):
                return reader.find_class(module, name)

            def persistent_load(self, pid):
                if persistent_load is None:
                    raise CheckpointError(
                        f"{reader.path}: the {where} pickle refers to a persistent object {_clip(pid)}; "
                        "this pickle holds none"
                    )
                return persistent_load(pid)

        try:
            # encoding: how torch.load decodes Python 2 strings.
            return _Unpickler(data_file, encoding="utf-8").load()
        except CheckpointError:
            raise
        except Exception as error:  # any malformed pickle: truncated, bad opcode, bad BUILD...
            # The pure-Python unpickler says EOFError, with no message, where the data ends too soon.
            detail = "truncated: it ends before its last opcode" if isinstance(error, EOFError) else error
            raise CheckpointError(
                f"{self.path}: not a readable PyTorch checkpoint: the {where} pickle is malformed "
                f"({type(error).__name__}: {detail})"
            ) from error

    def _storage_from_pid(self, pid, legacy: bool) -> _StorageRef:
        """Checks a persistent id and returns the storage it names (no bytes read yet)."""
        expected_len = 6 if legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == expected_len and pid[0] == "storage"):
            raise CheckpointError(
                f"{self.path}: refused the persistent id {_clip(pid)}: expected a storage id "
                f"('storage', storage_type, key, location, numel{', view_metadata' if legacy else ''})"
            )
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: persistent id {_clip(pid)}: {storage_type!r} is not a storage class")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise CheckpointError(
                f"{self.path}: persistent id {_clip(pid)}: expected a string key and a non-negative element count"
            )
        previous = self.declared.setdefault(key, (storage_type, numel))
        if previous[0].name != storage_type.name or previous[1] != numel:
            raise CheckpointError(
                f"{self.path}: storage {key!r} is declared twice, as {previous[1]} x {previous[0]!r} "
                f"and as {numel} x {storage_type!r}"
            )
        start, view_numel = 0, numel
        view_metadata = pid[5] if legacy else None
        if view_metadata is not None:  # (view_key, offset, view_size) from very old torch
            if not (
                isinstance(view_metadata, tuple)
                and len(view_metadata) == 3
                and _is_int(view_metadata[1])
                and _is_int(view_metadata[2])
            ):
                raise CheckpointError(f"{self.path}: persistent id {_clip(pid)}: malformed view metadata")
            start, view_numel = view_metadata[1], view_metadata[2]
            if start < 0 or view_numel < 0 or start + view_numel > numel:
                raise CheckpointError(
                    f"{self.path}: storage view [{start}, {start + view_numel}) of storage {key!r} "
                    f"lies outside its {numel} elements"
                )
        return _StorageRef(key, storage_type, numel, start, view_numel)

    # -- the two layouts ------------------------------------------------------

    def read(self) -> dict[str, np.ndarray]:
        with open(self.path, "rb") as file:
            head = file.read(len(_ZIP_MAGIC))
        if head == _ZIP_MAGIC:
            return self._read_zip()
        return self._read_legacy()

    def _read_zip(self) -> dict[str, np.ndarray]:
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
            # NotImplementedError: zipfile's word for an unknown "version needed to extract".
            raise CheckpointError(f"{self.path}: a broken zip archive, not a readable checkpoint ({error})") from error
        with archive:
            names = archive.namelist()
            pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(
                    f"{self.path}: a zip archive but not a torch.save checkpoint: expected one "
                    f"'<prefix>/data.pkl' entry, found {len(pickles)} among {names[:8]!r}"
                    + (" ..." if len(names) > 8 else "")
                )
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if prefix + "byteorder" in names:
                byteorder = self._read_entry(archive, prefix + "byteorder", max_size=16).decode("ascii", "replace")
                if byteorder not in ("little", "big"):
                    raise CheckpointError(
                        f"{self.path}: entry {prefix}byteorder says {byteorder!r}, expected 'little' or 'big'"
                    )
            data_pkl = self._read_entry(archive, pickles[0], max_size=self.file_size)

            def persistent_load(pid):
                return self._storage_from_pid(pid, legacy=False)

            try:
                top = self.unpickle(io.BytesIO(data_pkl), pickles[0], persistent_load)
            except UnsafeCheckpointError as error:
                if any(name.startswith(prefix + "code/") for name in names):
                    raise UnsafeCheckpointError(
                        f"{error} (this looks like a TorchScript archive from torch.jit.save, not a state dict)"
                    ) from None
                raise
            cache: dict[str, np.ndarray] = {}

            def storage_bytes(storage: _StorageRef) -> np.ndarray:
                if storage.key not in cache:
                    entry = f"{prefix}data/{storage.key}"
                    expected = storage.root_numel * storage.storage_type.itemsize
                    info = self._entry_info(archive, entry, what=f"storage {storage.key!r}")
                    if info.file_size != expected:
                        raise CheckpointError(
                            f"{self.path}: storage {storage.key!r} declares {storage.root_numel} elements "
                            f"of {storage.storage_type!r} ({expected} bytes) but entry {entry} holds "
                            f"{info.file_size} bytes"
                        )
                    raw = self._read_entry(archive, entry, max_size=expected)
                    dtype = storage.storage_type.file_dtype
                    if byteorder == "big":
                        dtype = dtype.newbyteorder(">")
                    cache[storage.key] = np.frombuffer(raw, dtype=dtype)
                return cache[storage.key]

            return self._state_dict(top, storage_bytes)

    def _entry_info(self, archive: zipfile.ZipFile, entry: str, what: str) -> zipfile.ZipInfo:
        try:
            info = archive.getinfo(entry)
        except KeyError:
            raise CheckpointError(f"{self.path}: {what} has no entry {entry} in the archive") from None
        if info.flag_bits & 0x1:  # zipfile would raise RuntimeError("... password required ...")
            raise CheckpointError(f"{self.path}: entry {entry} is encrypted; torch.save writes no encrypted entries")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{self.path}: entry {entry} is compressed (zip method {info.compress_type}); torch.save "
                "stores its entries uncompressed, and inflating one could make more bytes than the file holds"
            )
        if info.compress_size != info.file_size or info.header_offset + info.compress_size > self.file_size:
            raise CheckpointError(
                f"{self.path}: entry {entry} claims {info.file_size} bytes at offset {info.header_offset} "
                f"but the file has {self.file_size} bytes"
            )
        return info

    def _read_entry(self, archive: zipfile.ZipFile, entry: str, max_size: int) -> bytes:
        info = self._entry_info(archive, entry, what="the checkpoint")
        if info.file_size > max_size:
            raise CheckpointError(
                f"{self.path}: entry {entry} holds {info.file_size} bytes, expected at most {max_size}"
            )
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
            raise CheckpointError(f"{self.path}: entry {entry} cannot be read ({error})") from error

    def _read_legacy(self) -> dict[str, np.ndarray]:
        with open(self.path, "rb") as file:
            data = file.read()
        stream = io.BytesIO(data)
        try:
            magic = self.unpickle(stream, "first")
        except UnsafeCheckpointError:
            raise
        except CheckpointError as error:
            raise CheckpointError(
                f"{self.path}: not a PyTorch checkpoint: neither a zip archive nor a legacy torch.save "
                f"file (which starts with a pickled magic number) ({error.__cause__})"
            ) from error
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(
                f"{self.path}: not a PyTorch checkpoint: its first pickle is {_describe(magic)}, "
                f"not the legacy magic number {LEGACY_MAGIC_NUMBER:#x}"
            )
        protocol = self.unpickle(stream, "protocol version")
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(
                f"{self.path}: legacy protocol version {protocol!r}, expected {LEGACY_PROTOCOL_VERSION}"
            )
        self.unpickle(stream, "system info")  # torch writes the data little-endian whatever it says

        def persistent_load(pid):
            return self._storage_from_pid(pid, legacy=True)

        top = self.unpickle(stream, "main", persistent_load)
        keys = self.unpickle(stream, "storage keys")
        if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
            raise CheckpointError(f"{self.path}: the storage keys pickle is {_describe(keys)}, expected a list of str")
        # Storage key -> (byte offset of its elements in `data`, element count).
        records: dict[str, tuple[int, int]] = {}
        position = stream.tell()
        for key in keys:
            if key not in self.declared:
                raise CheckpointError(f"{self.path}: storage key {key!r} is listed but no tensor declares it")
            storage_type, numel = self.declared[key]
            if position + 8 > len(data):
                raise CheckpointError(
                    f"{self.path}: the file ends at byte {len(data)}, before the record of storage {key!r}"
                )
            (count,) = struct.unpack_from("<q", data, position)
            position += 8
            nbytes = count * storage_type.itemsize
            if count != numel:
                raise CheckpointError(
                    f"{self.path}: storage {key!r} is declared with {numel} elements but its record has {count}"
                )
            if position + nbytes > len(data):
                raise CheckpointError(
                    f"{self.path}: storage {key!r} holds {count} elements of {storage_type!r} "
                    f"({nbytes} bytes) but only {len(data) - position} bytes remain in the file"
                )
            records[key] = (position, count)
            position += nbytes

        def storage_bytes(storage: _StorageRef) -> np.ndarray:
            if storage.key not in records:
                raise CheckpointError(
                    f"{self.path}: storage {storage.key!r} is used by a tensor but missing from the storage key list"
                )
            offset, count = records[storage.key]
            return np.frombuffer(data, dtype=storage.storage_type.file_dtype, count=count, offset=offset)

        return self._state_dict(top, storage_bytes)

    # -- from pickled objects to arrays ---------------------------------------

    def _state_dict(self, top, storage_bytes) -> dict[str, np.ndarray]:
        if not isinstance(top, dict):
            raise CheckpointError(
                f"{self.path}: the checkpoint holds {_describe(top)}, expected a dict of name -> tensor "
                "(a state dict saved with torch.save(model.state_dict(), path))"
            )
        tensors = {key: value for key, value in top.items() if isinstance(value, _TensorRef)}
        if not tensors:
            # A wrapper such as {"model": state_dict, "optimizer": ..., "epoch": 3}: unwrap the
            # one dict value that holds tensors.
            inner = [
                key
                for key, value in top.items()
                if isinstance(value, dict) and any(isinstance(v, _TensorRef) for v in value.values())
            ]
            if len(inner) != 1:
                found = ", ".join(f"{key!r}: {_describe(value)}" for key, value in list(top.items())[:10])
                values = f"{len(inner)} dict values holding tensors ({', '.join(map(repr, inner))})" if inner else (
                    "no dict value holding tensors"
                )
                raise CheckpointError(
                    f"{self.path}: no tensors in the top-level dict {{{found}}}, and {values} to unwrap "
                    "(need exactly one, such as 'model' or 'state_dict')"
                )
            tensors = {key: value for key, value in top[inner[0]].items() if isinstance(value, _TensorRef)}
        result = {}
        for key, ref in tensors.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{self.path}: a tensor is stored under the key {key!r}, expected a str")
            result[key] = self._materialize(key, ref, storage_bytes)
        return result

    def _materialize(self, key: str, ref: _TensorRef, storage_bytes) -> np.ndarray:
        storage, offset, size, stride = ref.args
        where = f"{self.path}: tensor {key!r}"
        if not isinstance(storage, _StorageRef):
            raise CheckpointError(f"{where}: its storage is {_describe(storage)}, not a storage persistent id")
        if not (_is_int(offset) and offset >= 0):
            raise CheckpointError(f"{where}: storage offset {offset!r}, expected an int >= 0")
        if not (_is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)):
            raise CheckpointError(
                f"{where}: size {size!r} and stride {stride!r}, expected tuples of ints of one length"
            )
        if any(n < 0 for n in size) or any(s < 0 for s in stride):
            raise CheckpointError(f"{where}: size {tuple(size)} and stride {tuple(stride)} must be >= 0")
        storage_type = storage.storage_type
        numel = math.prod(size)
        if numel == 0:
            if offset > storage.numel:
                raise CheckpointError(f"{where}: offset {offset} past the {storage.numel} elements of its storage")
            array = np.zeros(size, dtype=storage_type.file_dtype)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= storage.numel:
                raise CheckpointError(
                    f"{where}: offset {offset}, size {tuple(size)} and stride {tuple(stride)} reach element "
                    f"{last} but its storage {storage.key!r} holds {storage.numel} elements"
                )
            if numel > storage.numel:
                # Only overlapping (e.g. broadcast, stride 0) views can do this; copying one
                # would allocate more than the file holds.
                raise CheckpointError(
                    f"{where}: {numel} elements from a storage of {storage.numel} (overlapping strides "
                    f"{tuple(stride)}); refusing to expand it beyond the bytes in the file"
                )
            elements = storage_bytes(storage)[storage.start : storage.start + storage.numel]
            itemsize = elements.dtype.itemsize
            view = np.lib.stride_tricks.as_strided(
                elements[offset:],
                shape=tuple(size),
                strides=tuple(s * itemsize for s in stride),
                writeable=False,
            )
            array = np.array(view, dtype=view.dtype.newbyteorder("="), order="C")  # a contiguous copy
        if storage_type.is_bool:
            array = array != 0
        elif storage_type.is_bfloat16:
            # bfloat16 is the top half of a float32: widening is exact.
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(array, order="C")  # (not ascontiguousarray: it makes 0-d arrays 1-d)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_tuple(value) -> bool:
    return isinstance(value, (tuple, list)) and all(_is_int(v) for v in value)


def _clip(value, limit: int = 100) -> str:
    """``repr(value)``, cut to ``limit`` characters (a pickle can hold long strings)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value) -> str:
    """A short description of an unpickled object for error messages."""
    if isinstance(value, _TensorRef):
        return "a tensor"
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {_clip(value, 40)}"


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict file into NumPy arrays, without torch and without running code.

    Reads files written by ``torch.save(model.state_dict(), path)`` in the zip
    layout (torch >= 1.6) and the legacy layout (``_use_new_zipfile_serialization=False``
    and older torch). Only the globals a state dict needs are admitted; any
    other raises :class:`UnsafeCheckpointError` and nothing is run. Non-tensor
    entries (ints, strings, ``None``) are skipped. A top level with no tensors
    but exactly one dict value holding tensors, such as ``{"model": state_dict,
    "epoch": 3}``, is unwrapped.

    Args:
        path: the ``.pth`` file.

    Returns:
        ``name -> array``, in the file's order: C-contiguous, writable copies
        with the tensors' shapes (0-d for scalars) and dtypes (``float32``,
        ``float16``, ``float64``, ``int64``, ``int32``, ``int16``, ``int8``,
        ``uint8``, ``bool``, ``complex64``, ``complex128``), except that
        ``bfloat16`` tensors come back as ``float32`` (exactly: NumPy has no
        bfloat16). Views (strides, storage offsets, shared storages) are copied
        out; no array is larger than the storage bytes it reads (x2 for bfloat16).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: a pickle names a global other than those torch
            writes into a state dict; the message names it as ``module.name``.
        CheckpointError: (a ``ValueError``) anything else wrong: not a
            checkpoint, not a dict of tensors, storages with fewer bytes than
            they declare, tensors reaching past their storage.

    Example:
        A pickle that would run ``os.system`` is refused and nothing runs:

        >>> import os, pickle, tempfile
        >>> class Payload:
        ...     def __reduce__(self):
        ...         return (os.system, ("echo pwned",))
        >>> path = os.path.join(tempfile.mkdtemp(), "evil.pth")
        >>> with open(path, "wb") as file:
        ...     pickle.dump(Payload(), file)
        >>> read_pth(path)
        Traceback (most recent call last):
        ...
        keras_retina.pretrained.pth.UnsafeCheckpointError: .../evil.pth: refused to load the global ...system ...

        See :func:`write_pth` for a file that reads back.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such PyTorch checkpoint", path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "A PyTorch checkpoint must be a file, not a directory", path)
    return _Reader(path).read()


def _pickle_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _pickle_int(value: int) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]  # BININT1 / BININT2 / BININT / LONG1, no PROTO, no STOP


def _pickle_tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE if items else pickle.EMPTY_TUPLE


def _pickle_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")


def write_pth(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Writes ``name -> array`` as a PyTorch state dict file that ``torch.load`` reads.

    The file has the zip layout of ``torch.save(state_dict, path)`` (entries
    ``archive/data.pkl``, ``archive/data/<i>`` aligned to 64 bytes,
    ``archive/byteorder``, ``archive/version``..., all but torch's random
    serialization id; a protocol-2 pickle of an ``OrderedDict`` of
    ``torch._utils._rebuild_tensor_v2`` calls, as torch writes it), so
    ``torch.load(path)`` (``weights_only=True`` included) returns a dict of
    contiguous CPU tensors, and :func:`read_pth` reads it back. Written by hand,
    opcode by opcode, because the standard pickler would import torch to check
    the names it writes.

    Args:
        path: the file to write (replaced if it exists).
        arrays: ``name -> array-like``; dtypes float16/32/64, int8/16/32/64,
            uint8, bool, complex64/128, or ``ml_dtypes.bfloat16``. Any shape,
            0-d included.

    Raises:
        ValueError: a name that is not a str, or an unsupported dtype; the
            message names the entry.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.pth")
        >>> write_pth(path, {"conv.weight": np.ones((2, 1, 3, 3), "float32"),
        ...                  "conv.bias": np.array([0.5, -1.0], "float32"),
        ...                  "bn.num_batches_tracked": np.array(7)})
        >>> weights = read_pth(path)
        >>> list(weights)
        ['conv.weight', 'conv.bias', 'bn.num_batches_tracked']
        >>> weights["conv.weight"].shape, weights["conv.bias"], weights["bn.num_batches_tracked"]
        ((2, 1, 3, 3), array([ 0.5, -1. ], dtype=float32), array(7))
    """
    storages: list[bytes] = []
    items: list[bytes] = []
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise ValueError(f"write_pth: array names must be str, got {name!r} ({type(name).__name__})")
        array = np.asarray(value)
        if array.dtype.name == "bfloat16" and array.dtype.itemsize == 2:  # ml_dtypes.bfloat16
            storage_name, raw = "BFloat16Storage", np.ascontiguousarray(array).view("<u2")
        elif array.dtype.newbyteorder("=") in _WRITE_STORAGE_NAMES:
            native = array.dtype.newbyteorder("=")
            storage_name = _WRITE_STORAGE_NAMES[native]
            raw = np.ascontiguousarray(array, dtype=native.newbyteorder("<"))
        else:
            raise ValueError(
                f"write_pth: array {name!r} has dtype {array.dtype}; supported: "
                f"{', '.join(str(d) for d in _WRITE_STORAGE_NAMES)}, bfloat16"
            )
        key = str(len(storages))
        storages.append(raw.tobytes())
        # Contiguous strides in elements, as torch computes them (a dim of size 0 counts as 1).
        strides, step = [], 1
        for n in reversed(array.shape):
            strides.append(step)
            step *= max(n, 1)
        storage_id = _pickle_tuple(
            [_pickle_str("storage"), _pickle_global("torch", storage_name), _pickle_str(key), _pickle_str("cpu"),
             _pickle_int(array.size)]
        ) + pickle.BINPERSID
        empty_ordered_dict = _pickle_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
        rebuild_args = _pickle_tuple(
            [storage_id, _pickle_int(0), _pickle_tuple([_pickle_int(n) for n in array.shape]),
             _pickle_tuple([_pickle_int(s) for s in reversed(strides)]), pickle.NEWFALSE, empty_ordered_dict]
        )
        items.append(_pickle_str(name) + _pickle_global("torch._utils", "_rebuild_tensor_v2") + rebuild_args
                     + pickle.REDUCE)
    data_pkl = (
        pickle.PROTO + b"\x02"
        + _pickle_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
        + (pickle.MARK + b"".join(items) + pickle.SETITEMS if items else b"")
        + pickle.STOP
    )
    records = [("data.pkl", data_pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", b"little")]
    records += [(f"data/{i}", raw) for i, raw in enumerate(storages)]
    records += [("version", b"3\n")]
    with zipfile.ZipFile(os.fspath(path), "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in records:
            info = zipfile.ZipInfo(f"archive/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            # Pad the local header with an extra field ("FB", as torch's writer) so that
            # the data starts on a multiple of 64 bytes, as torch.load(mmap=True) expects.
            header = 30 + len(info.filename.encode("utf-8")) + 4
            if len(data) * 1.05 > zipfile.ZIP64_LIMIT:
                header += 20  # zipfile adds a zip64 extra field
            padding = -(archive.fp.tell() + header) % _STORAGE_ALIGNMENT
            info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
            archive.writestr(info, data)
