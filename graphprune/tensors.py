"""Tensor storage for large models: weights stay in external data files until they are needed.

After loading, every external tensor's ``location`` is rewritten to the absolute path it was checked
against (internal only: files graphprune writes always use relative locations).  Reads go through
:func:`read`, which loads one tensor at a time from its file; rewritten tensors are appended to a
scratch file by :class:`ScratchWriter`; :func:`save_external` streams every tensor into the output's
``.data`` file.  Peak memory stays near the largest tensor rather than the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

CHUNK = 64 << 20
_ALIGN = 64


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _set_info(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def absolutize(tensors: Iterator[onnx.TensorProto], base_dir: Path) -> int:
    """Point external locations at absolute paths (already checked to lie inside ``base_dir``)."""
    n = 0
    for t in tensors:
        if is_external(t):
            info = _info(t)
            path = (base_dir / info["location"]).resolve()
            _set_info(t, str(path), int(info.get("offset", 0)), int(info.get("length", 0)) or _nbytes(t))
            n += 1
    return n


def _nbytes(t: onnx.TensorProto) -> int:
    dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
    return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(dtype).itemsize


def read(t: onnx.TensorProto) -> np.ndarray:
    """The tensor's values (inline, or read from its external file without touching the rest)."""
    if not is_external(t):
        return numpy_helper.to_array(t)
    info = _info(t)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    count = int(np.prod(t.dims, dtype=np.int64))
    with open(info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        arr = np.fromfile(f, dtype=dtype, count=count)
    if arr.size != count:
        raise OSError(f"external data for '{t.name}' is truncated in {info['location']}")
    return arr.reshape(tuple(t.dims))


class ScratchWriter:
    """Appends rewritten tensors to one scratch file; tensors reference it by absolute path."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / f".graphprune-scratch-{os.getpid()}-{id(self)}.data"
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def put(self, name: str, arr: np.ndarray) -> onnx.TensorProto:
        arr = np.ascontiguousarray(arr)
        pad = (-self._f.tell()) % _ALIGN
        self._f.write(b"\0" * pad)
        offset = self._f.tell()
        self._f.write(arr.tobytes())
        self._f.flush()
        t = onnx.TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        _set_info(t, str(self.path), offset, arr.nbytes)
        return t

    def close(self, remove: bool = True) -> None:
        self._f.close()
        if remove:
            self.path.unlink(missing_ok=True)


def has_external(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in model.graph.initializer)


def save_external(model: onnx.ModelProto, proto_tmp: Path, data_tmp: Path, data_name: str,
                  threshold: int = 1024) -> None:
    """Write ``model`` with every tensor >= ``threshold`` bytes streamed into ``data_tmp``; locations in
    the written proto name ``data_name`` (relative).  The in-memory model is not changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    with open(data_tmp, "wb") as f:
        for t in out.graph.initializer:
            if is_external(t):
                info = _info(t)
                length = int(info.get("length", 0)) or _nbytes(t)
                offset = _pad(f)
                with open(info["location"], "rb") as src:
                    src.seek(int(info.get("offset", 0)))
                    left = length
                    while left:
                        chunk = src.read(min(CHUNK, left))
                        if not chunk:
                            raise OSError(f"external data for '{t.name}' is truncated")
                        f.write(chunk)
                        left -= len(chunk)
                _set_info(t, data_name, offset, length)
            elif len(t.raw_data) >= threshold or _nbytes(t) >= threshold:
                arr = numpy_helper.to_array(t)
                offset = _pad(f)
                f.write(np.ascontiguousarray(arr).tobytes())
                name = t.name
                t.Clear()
                t.name = name
                t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
                t.dims.extend(arr.shape)
                t.data_location = onnx.TensorProto.EXTERNAL
                _set_info(t, data_name, offset, arr.nbytes)
        f.flush()
        os.fsync(f.fileno())
    with open(proto_tmp, "wb") as pf:
        pf.write(out.SerializeToString())
        pf.flush()
        os.fsync(pf.fileno())


def _pad(f) -> int:
    pad = (-f.tell()) % _ALIGN
    f.write(b"\0" * pad)
    return int(f.tell())


def weightless(model: onnx.ModelProto, min_elements: int = 4096) -> onnx.ModelProto:
    """A copy whose weights (external ones, and inline ones of ``min_elements`` or more) become graph
    inputs of the same type and shape: shape inference and the full checker (strict shape inference)
    then work without copying or reading any weight.  Small constants stay for data propagation."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = model.graph
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    inputs = {i.name for i in g.input}
    for t in g.initializer:
        if is_external(t) or int(np.prod(t.dims, dtype=np.int64)) >= min_elements:
            if t.name not in inputs:
                lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            lg.initializer.append(t)
    return light
