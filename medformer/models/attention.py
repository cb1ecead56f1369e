"""Attention layers shared by the Input/Output Adaptformers and the transformer body.

All attention goes through `attention()`: SDPA everywhere, xformers' memory-efficient kernel
only for CUDA tensors when xformers imports (it has no CPU kernels).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

try:  # optional GPU extra
    import xformers.ops as xops
except Exception:  # noqa: BLE001 - any import failure means "not available"
    xops = None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention over [B, heads, N, head_dim] tensors."""
    if xops is not None and q.is_cuda:
        out = xformers_attention(q, k, v, dropout_p)
        if out is not None:
            return out
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor | None:
    """xformers' memory-efficient kernel, or None when it has no kernel for these inputs; then
    xformers stays off for the rest of the process. A wheel built for another torch or CUDA imports
    fine but has no CUDA kernels at all, and training must not die of that."""
    global xops
    try:
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), p=dropout_p)
    except NotImplementedError as exc:
        reason = str(exc).strip().splitlines()[0]
        warnings.warn(f"xformers cannot run this attention ({reason}); using PyTorch SDPA from now on. "
                      "Install an xformers build that matches your torch and CUDA to use it.", stacklevel=2)
        xops = None
        return None
    return out.transpose(1, 2)


class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries `x` over `context` (self-attention when context is None)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, attn_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        k, v = self.kv(context).chunk(2, dim=-1)
        drop = self.attn_drop if self.training else 0.0
        out = attention(self._split(self.q(x)), self._split(k), self._split(v), drop)
        return self.proj(out.transpose(1, 2).flatten(2))

    def attention_weights(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention weights [B, heads, Nq, Nk], for attention maps (no fused kernel)."""
        context = x if context is None else context
        q = self._split(self.q(x))
        k, _ = self.kv(context).chunk(2, dim=-1)
        k = self._split(k)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)


class Block(nn.Module):
    """Pre-norm transformer block: (cross- or self-) attention then MLP, each residual."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        context_dim: int | None = None,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim else None
        self.attn = MultiHeadAttention(dim, heads, context_dim, attn_drop=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = self.norm_context(context) if self.norm_context is not None else None
        x = x + self.drop_path(self.attn(self.norm_q(x), ctx))
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))
