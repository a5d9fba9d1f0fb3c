"""Loading and saving ONNX models safely.

* external data is checked before any of it is opened: a location must be a relative path that stays
  inside the model's folder (no ``..``, no absolute path, no symlink out of the folder);
* old opsets (< 11) are converted with the ONNX version converter, newer-than-known ones are refused;
* shape inference runs with symbolic dimensions kept; tensors left without a shape are reported;
* outputs are written atomically (temporary file in the destination folder, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import external_data_helper, shape_inference

from graphprune.errors import ModelLoadError, UnsafeModelError, UnsupportedModelError, UsageError

log = logging.getLogger(__name__)

MIN_NATIVE_OPSET = 11
MAX_TESTED_OPSET = 21
_PROTOBUF_LIMIT = 2**31 - 1
_T = onnx.TensorProto
_ITEMSIZE: dict[int, int] = {_T.FLOAT: 4, _T.DOUBLE: 8, _T.FLOAT16: 2, _T.BFLOAT16: 2, _T.INT8: 1, _T.UINT8: 1, _T.INT16: 2,
             _T.UINT16: 2, _T.INT32: 4, _T.UINT32: 4, _T.INT64: 8, _T.UINT64: 8, _T.BOOL: 1,
             _T.COMPLEX64: 8, _T.COMPLEX128: 16}


@dataclass
class LoadedModel:
    """A model plus what loading learnt about it."""

    model: onnx.ModelProto
    path: Path | None
    sha256: str | None
    original_opset: int
    warnings: list[str] = field(default_factory=list)
    external_files: list[str] = field(default_factory=list)

    @property
    def opset(self) -> int:
        return onnx_opset(self.model)


def onnx_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto a graph holds: initializers, sparse initializers, attribute tensors, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _iter_node_tensors(graph.node)


def _iter_node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            elif attr.type == onnx.AttributeProto.SPARSE_TENSORS:
                for sparse in attr.sparse_tensors:
                    yield from (sparse.values, sparse.indices)
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_tensors(g)


def _iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model, model-local functions included (ONNX Runtime loads those too)."""
    yield from _iter_tensors(model.graph)
    for fn in model.functions:
        yield from _iter_node_tensors(fn.node)


def check_external_data_locations(model: onnx.ModelProto, base_dir: Path) -> list[str]:
    """Refuse external data that would read outside ``base_dir``; return the referenced files.

    Runs on locations only: no external file is opened here.
    """
    base = base_dir.resolve()
    files: list[str] = []
    for tensor in _iter_model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        if not loc:
            raise UnsafeModelError(f"tensor '{tensor.name}' has external data without a location")
        p = Path(loc)
        if p.is_absolute() or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data location '{loc}' is an absolute path; "
                "graphprune only reads external data stored beside the model"
            )
        if ".." in Path(loc.replace("\\", "/")).parts:
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data location '{loc}' escapes the model folder"
            )
        resolved = (base / p).resolve()
        if resolved != base and base not in resolved.parents:
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data location '{loc}' resolves outside the model "
                f"folder (symlink to {resolved})"
            )
        if not resolved.is_file():
            raise ModelLoadError(
                f"tensor '{tensor.name}': external data file '{loc}' is missing beside the model"
            )
        _check_external_bounds(tensor, info, resolved, loc)
        files.append(loc)
    return sorted(set(files))


def _check_external_bounds(tensor: onnx.TensorProto, info: dict[str, str], path: Path, loc: str) -> None:
    """The bytes a tensor names must lie inside its data file (a stat, no read): a truncated or short
    file is refused at load instead of failing later, half-way through a rewrite."""
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ModelLoadError(f"tensor '{tensor.name}': external data offset/length are not integers") from None
    itemsize = _ITEMSIZE.get(tensor.data_type)  # None for strings and sub-byte types: no size check
    if length is None and itemsize is not None:
        n = 1
        for d in tensor.dims:
            n *= int(d)
        length = n * itemsize
    size = path.stat().st_size
    if offset < 0 or (length is not None and (length < 0 or offset + length > size)):
        raise ModelLoadError(
            f"tensor '{tensor.name}': external data file '{loc}' is truncated or too short "
            f"({size} bytes; the tensor needs bytes {offset}..{offset + (length or 0)})"
        )


def load_model(
    source: str | os.PathLike[str] | onnx.ModelProto,
    *,
    infer_shapes: bool = True,
    load_external: bool = True,
    materialize: bool = False,
) -> LoadedModel:
    """Load, sanity-check, convert old opsets and run shape inference.

    External weights are not read here: their locations are checked and made absolute, and
    :mod:`graphprune.tensors` reads each tensor when it is needed (``materialize=True`` loads them all
    into the proto instead; ``load_external=False`` leaves locations untouched).
    """
    warnings: list[str] = []
    path: Path | None = None
    digest: str | None = None
    ext_files: list[str] = []
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
        size = path.stat().st_size
        if size == 0:
            raise ModelLoadError(f"{path}: file is empty")
        if size > _PROTOBUF_LIMIT:  # protobuf cannot parse it: refuse before reading gigabytes
            raise ModelLoadError(
                f"{path}: file is {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for one ONNX file; "
                "save the weights as external data (onnx.save_model(..., save_as_external_data=True))"
            )
        try:
            digest = file_sha256(path)
            model = onnx.load(str(path), load_external_data=False)
        except PermissionError as e:
            raise ModelLoadError(f"{path}: cannot read file ({e.strerror})") from e
        except Exception as e:  # protobuf raises DecodeError / RuntimeWarning variants
            raise ModelLoadError(f"{path}: not a valid ONNX file ({type(e).__name__}: {e})".rstrip(": ")) from e
        if not model.graph.node and not model.graph.output:
            raise ModelLoadError(f"{path}: not a valid ONNX model (no graph found)")
        ext_files = check_external_data_locations(model, path.parent)
        if ext_files and materialize:
            try:
                external_data_helper.load_external_data_for_model(model, str(path.parent))
            except Exception as e:
                raise ModelLoadError(f"{path}: cannot read external data ({e})") from e
        elif ext_files and load_external:
            from graphprune.tensors import absolutize

            absolutize(_iter_model_tensors(model), path.parent)
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"model has IR version {model.ir_version}, newer than this onnx {onnx.__version__} knows "
            f"(max {onnx.IR_VERSION}); upgrade onnx or re-export the model"
        )
    _check_structure(model)
    opset = onnx_opset(model)
    original = opset
    max_known = onnx.defs.onnx_opset_version()
    if opset == 0:
        raise UnsupportedModelError("model imports no default-domain (ai.onnx) opset")
    if opset > max_known:
        raise UnsupportedModelError(
            f"model uses ai.onnx opset {opset}, newer than this onnx {onnx.__version__} knows "
            f"(max {max_known}); upgrade onnx or export with opset <= {MAX_TESTED_OPSET}"
        )
    if opset > MAX_TESTED_OPSET:
        warnings.append(f"opset {opset} is newer than the tested range 11-{MAX_TESTED_OPSET}")
    if opset < MIN_NATIVE_OPSET:
        model = _convert_opset(model, 13)
        warnings.append(f"converted ai.onnx opset {opset} to 13 with the ONNX version converter")
    if infer_shapes:
        model = run_shape_inference(model)
        from graphprune.shape_fold import fold_static_shape_inputs

        for _ in range(4):  # folding can expose more static shapes
            n = fold_static_shape_inputs(model)
            if not n:
                break
            del model.graph.value_info[:]
            model = run_shape_inference(model)
            warnings.append(f"folded {n} computed shape inputs into constants (static dims, or dims copied from the input)")
    return LoadedModel(model=model, path=path, sha256=digest, original_opset=original, warnings=warnings,
                       external_files=ext_files)


def _check_structure(model: onnx.ModelProto) -> None:
    """Cheap structural checks the ONNX checker does not phrase helpfully."""
    g = model.graph
    _refuse_duplicates("initializer", [t.name for t in g.initializer] + [s.values.name for s in g.sparse_initializer])
    _refuse_duplicates("graph input", [i.name for i in g.input])
    _refuse_duplicates("node name", [n.name for n in g.node if n.name],
                       "ONNX Runtime refuses such models; give every node a unique name")
    initializers = {t.name for t in g.initializer} | {s.values.name for s in g.sparse_initializer}
    seen: set[str] = set(initializers)
    for i in g.input:
        seen.add(i.name)
    produced: dict[str, str] = {}
    for n in g.node:
        for o in n.output:
            if not o:
                continue
            if o in produced or o in initializers:
                raise ModelLoadError(
                    f"tensor '{o}' is produced twice (node '{n.name or n.op_type}'); the graph is not SSA"
                )
            produced[o] = n.name
    available = seen | set(produced)
    for n in g.node:
        for i in n.input:
            if i and i not in available:
                raise ModelLoadError(
                    f"node '{n.name or n.op_type}' reads tensor '{i}', which no node, input or "
                    "initializer provides"
                )
    # topological order / cycle check
    order_ok = True
    ready = set(seen)
    for n in g.node:
        if any(i and i not in ready for i in n.input):
            order_ok = False
            break
        ready.update(o for o in n.output if o)
    if not order_ok:
        try:
            _toposort(model)
        except ModelLoadError:
            raise
    for o in g.output:
        if o.name not in available:
            raise ModelLoadError(f"graph output '{o.name}' is not produced by any node")


def _refuse_duplicates(what: str, names: list[str], hint: str = "the graph is ambiguous") -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ModelLoadError(f"{what} '{name}' appears {names.count(name)} times; {hint}")
        seen.add(name)


def _toposort(model: onnx.ModelProto) -> None:
    """Sort nodes topologically in place, or fail on a cycle."""
    g = model.graph
    ready = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            names = ", ".join(sorted(n.name or n.op_type for n in rest)[:5])
            raise ModelLoadError(f"graph has a cycle (nodes involved include: {names})")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def _convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as e:
        raise UnsupportedModelError(
            f"model uses ai.onnx opset {onnx_opset(model)} (< {MIN_NATIVE_OPSET}) and the ONNX version "
            f"converter could not upgrade it safely ({e}); re-export with opset >= {MIN_NATIVE_OPSET}"
        ) from e
    return converted


def run_shape_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with symbolic dims and data propagation, on a weight-less copy.

    Weights only matter for their shapes, so big initializers become graph inputs of the same type and
    shape; small ones (shape vectors, axes) stay for data propagation.  Serialising weights into the
    C++ inference would cost seconds on large models and fail above 2 GiB.
    """
    from graphprune.tensors import weightless

    light = weightless(model)
    try:
        inferred = shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelLoadError(f"ONNX shape inference failed: {e}") from e
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for out, inf in zip(model.graph.output, inferred.graph.output, strict=True):  # outputs get shapes too
        out.type.CopyFrom(inf.type)
    return model


def save_model_atomic(
    model: onnx.ModelProto,
    dest: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``dest`` atomically; never over ``source``.

    Large models (or ``external_data=True``) are written with their weights in ``<name>.data`` beside the
    file; both files are written under temporary names and renamed into place.
    """
    dest = Path(dest)
    if source is not None:
        src = Path(source)
        if src.exists() and dest.exists() and os.path.samefile(src, dest) or (
            dest.resolve() == Path(source).resolve()
        ):
            raise UsageError(f"output path {dest} is the input file; choose another path with -o")
    from graphprune.fileio import check_output_dir
    from graphprune.tensors import has_external, save_external

    check_output_dir(dest)
    parent = dest.parent if str(dest.parent) else Path(".")

    if external_data is None:
        external_data = has_external(model) or model.ByteSize() >= _PROTOBUF_LIMIT - (64 << 20)
    tmp_files: list[Path] = []
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        tmp = Path(tmp_name)
        tmp_files.append(tmp)
        if external_data:
            data_name = dest.name + ".data"
            tmp_data = parent / f".{data_name}.tmp"
            tmp_files.append(tmp_data)
            save_external(model, tmp, tmp_data, data_name)
            _default_permissions(tmp_data)
            os.replace(tmp_data, parent / data_name)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
        _default_permissions(tmp)
        os.replace(tmp, dest)
        tmp_files = [p for p in tmp_files if p.exists() and p != dest]
    except OSError as e:
        raise ModelLoadError(f"cannot write {dest}: {e.strerror or e}") from e
    finally:
        for p in tmp_files:
            with contextlib.suppress(OSError):
                p.unlink()
    return dest


def _default_permissions(path: Path) -> None:
    """mkstemp creates 0600 files; give outputs the usual 0666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
