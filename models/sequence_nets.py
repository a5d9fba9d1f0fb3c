"""Sequence models in plain PyTorch: ViT, BERT encoder, LSTM. Attention is written out by hand so
the exported graph shows the reshape/transpose idioms (fused qkv for ViT, separate q/k/v for BERT).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Fused-qkv multi-head self-attention, timm style: reshape to [B, N, 3, heads, hd] and permute."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """``pos_std`` > 0 draws the position embedding from N(0, pos_std²) (a training start), else zeros."""

    def __init__(
        self, image_size: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: int, num_classes: int,
        in_channels: int = 3, pos_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        shape = (1, (image_size // patch) ** 2 + 1, dim)
        self.pos_embed = nn.Parameter(pos_std * torch.randn(*shape) if pos_std else torch.zeros(*shape))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(
    image_size: int = 224,
    patch: int = 16,
    dim: int = 768,
    depth: int = 12,
    heads: int = 12,
    mlp_ratio: int = 4,
    num_classes: int = 1000,
) -> nn.Module:
    """ViT-B/16 by default; pre-norm blocks, class token, learned position embedding."""
    return ViT(image_size, patch, dim, depth, heads, mlp_ratio, num_classes)


class BertLayer(nn.Module):
    """Post-norm encoder layer with separate q/k/v projections, as in Hugging Face's BertLayer."""

    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=1e-12)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(-1)
        ctx = (probs @ v).transpose(1, 2).reshape(x.shape)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.output(self.act(self.intermediate(x))))


class Bert(nn.Module):
    position_ids: torch.Tensor

    def __init__(
        self, vocab: int, hidden: int, layers: int, heads: int, intermediate: int, max_positions: int
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.Sequential(*(BertLayer(hidden, heads, intermediate) for _ in range(layers)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.layers(self.norm(x))


def bert(
    vocab: int = 30522,
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    intermediate: int = 3072,
    max_positions: int = 512,
) -> nn.Module:
    """BERT-base encoder by default (no token-type embeddings, no pooler); output is [B, S, hidden]."""
    return Bert(vocab, hidden, layers, heads, intermediate, max_positions)


# ------------------------------------------------------------------------------------ small ones


class LSTMModel(nn.Module):
    def __init__(self, input_size: int, hidden: int, layers: int, num_classes: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm_model(input_size: int = 64, hidden: int = 512, layers: int = 2, num_classes: int = 10) -> nn.Module:
    """Batch-first stacked LSTM over [B, S, input_size]; Linear head on the last time step."""
    return LSTMModel(input_size, hidden, layers, num_classes)
