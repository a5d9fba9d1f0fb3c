"""Write a LLaMA-style decoder as ONNX (RMSNorm, RoPE, grouped-query attention, SwiGLU), random
weights, any size, weights in external data written tensor by tensor (bounded memory).

    python models/llama.py --out /tmp/llama.onnx                     # tiny (tests)
    python models/llama.py --out /tmp/llama1b.onnx --preset 1b       # ~1.1B parameters (benchmarks)

No torch needed: the graph is built with onnx.helper, as the PyTorch exporter spells these blocks
(decomposed RMSNorm, rotate-half RoPE with Slice/Neg/Concat, repeat_kv as Unsqueeze/Expand/Reshape).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass(frozen=True)
class LlamaConfig:
    vocab: int = 128
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    max_seq: int = 64
    tie_embeddings: bool = False
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self) -> int:
        d, kv = self.head_dim, self.kv_heads
        per_layer = 2 * self.hidden + self.hidden * (self.heads * d + 2 * kv * d) + self.heads * d * self.hidden
        per_layer += 3 * self.hidden * self.ffn
        head = 0 if self.tie_embeddings else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * per_layer + self.hidden + head


PRESETS = {
    "tiny": LlamaConfig(),
    "small": LlamaConfig(vocab=512, hidden=256, layers=4, heads=8, kv_heads=2, ffn=688, max_seq=128),
    # TinyLlama-1.1B shapes
    "1b": LlamaConfig(vocab=32000, hidden=2048, layers=22, heads=32, kv_heads=4, ffn=5632, max_seq=256),
    # LLaMA-2-7B shapes (for analysis-only benchmarks: weights are never loaded)
    "7b": LlamaConfig(vocab=32000, hidden=4096, layers=32, heads=32, kv_heads=32, ffn=11008, max_seq=256),
}


class _Writer:
    """Collects nodes; weights go straight to the external data file (or stay inline if small)."""

    def __init__(self, data_path: Path | None, seed: int, sparse: bool = False) -> None:
        self.sparse = sparse  # reserve the bytes (a file with holes) instead of writing random values
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.data_path = data_path
        self.fh = open(data_path, "wb") if data_path else None  # noqa: SIM115
        self.k = 0

    def close(self) -> None:
        if self.fh:
            self.fh.close()

    def weight(self, name: str, shape: tuple[int, ...], scale: float | None = None, value: float | None = None) -> str:
        if self.sparse and self.fh is not None and value is None:
            self.reserve(name, shape)
            return name
        if value is not None:
            arr = np.full(shape, value, dtype=np.float32)
        else:
            std = scale if scale is not None else 1.0 / math.sqrt(shape[0])
            arr = (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        self.add_tensor(name, arr)
        return name

    def add_tensor(self, name: str, arr: np.ndarray) -> None:
        if self.fh is None or arr.nbytes < 1024:
            self.inits.append(numpy_helper.from_array(arr, name))
            return
        pad = (-self.fh.tell()) % 64
        self.fh.write(b"\0" * pad)
        offset = self.fh.tell()
        self.fh.write(np.ascontiguousarray(arr).tobytes())
        t = onnx.TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(arr.nbytes))):  # type: ignore[union-attr]
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)

    def reserve(self, name: str, shape: tuple[int, ...]) -> None:
        assert self.fh is not None and self.data_path is not None
        nbytes = int(np.prod(shape)) * 4
        offset = self.fh.seek(0, os.SEEK_END)
        offset += (-offset) % 64
        self.fh.truncate(offset + nbytes)
        t = onnx.TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)

    def const(self, arr: np.ndarray, base: str = "c") -> str:
        self.k += 1
        name = f"{base}_{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _rms_norm(w: _Writer, x: str, weight: str, eps: float, name: str) -> str:
    sq = w.op("Pow", [x, w.const(np.array(2.0, np.float32))], f"{name}/pow")
    mean = w.op("ReduceMean", [sq], f"{name}/mean", axes=[-1], keepdims=1)
    den = w.op("Sqrt", [w.op("Add", [mean, w.const(np.array(eps, np.float32))], f"{name}/add")], f"{name}/sqrt")
    return w.op("Mul", [w.op("Div", [x, den], f"{name}/div"), weight], f"{name}/scale")


def _rotate(w: _Writer, x: str, cos: str, sin: str, d: int, name: str) -> str:
    half = d // 2
    ax = w.const(np.array([-1], np.int64))
    x1 = w.op("Slice", [x, w.const(np.array([0], np.int64)), w.const(np.array([half], np.int64)), ax], f"{name}/x1")
    x2 = w.op("Slice", [x, w.const(np.array([half], np.int64)), w.const(np.array([d], np.int64)), ax], f"{name}/x2")
    rot = w.op("Concat", [w.op("Neg", [x2], f"{name}/neg"), x1], f"{name}/rot", axis=-1)
    a = w.op("Mul", [x, cos], f"{name}/cos")
    b = w.op("Mul", [rot, sin], f"{name}/sin")
    return w.op("Add", [a, b], f"{name}/rope")


def build(cfg: LlamaConfig, out: Path, *, seed: int = 0, external: bool = True, sparse: bool = False) -> Path:
    """Write the decoder; ``sparse`` leaves the big weights as holes in the data file (all zeros, no disk
    use): enough for analysis benchmarks that never read weights."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = out.with_name(out.name + ".data") if external else None
    w = _Writer(data, seed, sparse=sparse)
    d, h, kv, n_rep = cfg.head_dim, cfg.heads, cfg.kv_heads, cfg.heads // cfg.kv_heads
    try:
        emb = w.weight("model.embed_tokens.weight", (cfg.vocab, cfg.hidden), scale=1.0)
        x = w.op("Gather", [emb, "input_ids"], "embed")
        # RoPE tables for positions 0..S-1 (S = dynamic sequence length)
        pos = np.arange(cfg.max_seq)[:, None] / (10000 ** (np.arange(0, d, 2) / d))[None, :]
        cos_t = w.const(np.concatenate([np.cos(pos), np.cos(pos)], -1).astype(np.float32), "rope_cos")
        sin_t = w.const(np.concatenate([np.sin(pos), np.sin(pos)], -1).astype(np.float32), "rope_sin")
        shape = w.op("Shape", ["input_ids"], "ids_shape")
        seq = w.op("Gather", [shape, w.const(np.array([1], np.int64))], "seq_len", axis=0)
        zero = w.const(np.array([0], np.int64))
        cos = w.op("Slice", [cos_t, zero, seq, zero], "cos_s")
        sin = w.op("Slice", [sin_t, zero, seq, zero], "sin_s")
        mask_t = np.triu(np.full((cfg.max_seq, cfg.max_seq), -1e9, np.float32), 1)
        mask_c = w.const(mask_t, "causal")
        mask = w.op("Slice", [mask_c, w.const(np.array([0, 0], np.int64)), w.op("Concat", [seq, seq], "ss", axis=0),
                              w.const(np.array([0, 1], np.int64))], "mask")
        for i in range(cfg.layers):
            p = f"model.layers.{i}"
            n = f"/layers.{i}"
            hn = _rms_norm(w, x, w.weight(f"{p}.input_layernorm.weight", (cfg.hidden,), value=1.0), cfg.eps, f"{n}/attn_norm")
            q = w.op("MatMul", [hn, w.weight(f"{p}.self_attn.q_proj.weight", (cfg.hidden, h * d))], f"{n}/q_proj")
            k = w.op("MatMul", [hn, w.weight(f"{p}.self_attn.k_proj.weight", (cfg.hidden, kv * d))], f"{n}/k_proj")
            v = w.op("MatMul", [hn, w.weight(f"{p}.self_attn.v_proj.weight", (cfg.hidden, kv * d))], f"{n}/v_proj")
            q = w.op("Transpose", [w.op("Reshape", [q, w.const(np.array([0, 0, h, d], np.int64))], f"{n}/q_heads")],
                     f"{n}/q_t", perm=[0, 2, 1, 3])
            k = w.op("Transpose", [w.op("Reshape", [k, w.const(np.array([0, 0, kv, d], np.int64))], f"{n}/k_heads")],
                     f"{n}/k_t", perm=[0, 2, 1, 3])
            v = w.op("Transpose", [w.op("Reshape", [v, w.const(np.array([0, 0, kv, d], np.int64))], f"{n}/v_heads")],
                     f"{n}/v_t", perm=[0, 2, 1, 3])
            q = _rotate(w, q, cos, sin, d, f"{n}/q_rope")
            k = _rotate(w, k, cos, sin, d, f"{n}/k_rope")
            if n_rep > 1:  # repeat_kv: [B, kv, S, d] -> [B, kv, n_rep, S, d] -> [B, h, S, d]
                rep = w.const(np.array([1, 1, n_rep, 1, 1], np.int64))
                tgt = w.const(np.array([0, h, -1, d], np.int64))
                k = w.op("Reshape", [w.op("Expand", [w.op("Unsqueeze", [k, w.const(np.array([2], np.int64))],
                                                          f"{n}/k_unsq"), rep], f"{n}/k_exp"), tgt], f"{n}/k_rep")
                v = w.op("Reshape", [w.op("Expand", [w.op("Unsqueeze", [v, w.const(np.array([2], np.int64))],
                                                          f"{n}/v_unsq"), rep], f"{n}/v_exp"), tgt], f"{n}/v_rep")
            kt = w.op("Transpose", [k], f"{n}/k_tt", perm=[0, 1, 3, 2])
            s = w.op("MatMul", [q, kt], f"{n}/scores")
            s = w.op("Mul", [s, w.const(np.array(1.0 / math.sqrt(d), np.float32))], f"{n}/scale")
            s = w.op("Add", [s, mask], f"{n}/masked")
            att = w.op("Softmax", [s], f"{n}/softmax", axis=-1)
            ctx = w.op("MatMul", [att, v], f"{n}/context")
            ctx = w.op("Reshape", [w.op("Transpose", [ctx], f"{n}/ctx_t", perm=[0, 2, 1, 3]),
                                   w.const(np.array([0, 0, h * d], np.int64))], f"{n}/ctx_merge")
            o = w.op("MatMul", [ctx, w.weight(f"{p}.self_attn.o_proj.weight", (h * d, cfg.hidden))], f"{n}/o_proj")
            x = w.op("Add", [x, o], f"{n}/attn_residual")
            hn = _rms_norm(w, x, w.weight(f"{p}.post_attention_layernorm.weight", (cfg.hidden,), value=1.0),
                           cfg.eps, f"{n}/ffn_norm")
            gate = w.op("MatMul", [hn, w.weight(f"{p}.mlp.gate_proj.weight", (cfg.hidden, cfg.ffn))], f"{n}/gate")
            up = w.op("MatMul", [hn, w.weight(f"{p}.mlp.up_proj.weight", (cfg.hidden, cfg.ffn))], f"{n}/up")
            act = w.op("Mul", [gate, w.op("Sigmoid", [gate], f"{n}/gate_sig")], f"{n}/silu")
            down = w.op("MatMul", [w.op("Mul", [act, up], f"{n}/swiglu"),
                                   w.weight(f"{p}.mlp.down_proj.weight", (cfg.ffn, cfg.hidden))], f"{n}/down")
            x = w.op("Add", [x, down], f"{n}/ffn_residual")
        x = _rms_norm(w, x, w.weight("model.norm.weight", (cfg.hidden,), value=1.0), cfg.eps, "/final_norm")
        if cfg.tie_embeddings:
            head = w.op("Transpose", [emb], "/lm_head_t", perm=[1, 0])
        else:
            head = w.weight("lm_head.weight", (cfg.hidden, cfg.vocab))
        w.nodes.append(helper.make_node("MatMul", [x, head], ["logits"], name="/lm_head"))
    finally:
        w.close()
    graph = helper.make_graph(
        w.nodes, "llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab])],
        w.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="graphprune-llama")
    model.ir_version = 8
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(tmp, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inline", action="store_true", help="keep weights inside the .onnx file")
    ap.add_argument("--sparse", action="store_true", help="reserve weight bytes without writing them (analysis only)")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    if args.layers is not None:
        cfg = LlamaConfig(**{**cfg.__dict__, "layers": args.layers})
    path = build(cfg, args.out, seed=args.seed, external=not args.inline, sparse=args.sparse)
    print(f"{path}: {cfg.params():,} parameters ({cfg})")


if __name__ == "__main__":
    main()
