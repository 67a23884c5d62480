"""ViT blocks with one attention implementation: SDPA with an optional additive relative-position term.

Parameter names follow MAE / timm (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``) plus ``attn.rpe_k.lookup_table_weight`` for iRPE, so released checkpoints load by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from adpe.rpe import KeyRPE, Lookup

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class RelPos:
    """The relative-position input of one attention layer.

    lookup: where each (query, key) pair reads the iRPE table (N counts the cls token).
    row_delta: (head_dim,) adversarial vector added to every table entry for the queries in ``query_mask``
        (RPE embedding mode); query_mask: (B, N) float, 1 for perturbed query rows.
    """

    lookup: Lookup
    row_delta: Tensor | None = None
    query_mask: Tensor | None = None


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rpe: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rpe_k = KeyRPE(self.head_dim) if rpe else None

    def relative_logits(self, q: Tensor, rel_pos: RelPos) -> Tensor:
        """q: (B, H, N, head_dim) -> additive logits (B, H, N, N).

        The released AdPE code adds ``q . r`` with the *unscaled* query (only q . k is scaled); the parity
        fixture from that code confirms it, so we do the same.
        """
        logits = self.rpe_k(q, rel_pos.lookup)
        if rel_pos.row_delta is not None:
            # Every bucket of a perturbed row reads r_b + delta, i.e. gains q_i . delta.
            row_gain = q @ rel_pos.row_delta.to(q.dtype)  # (B, H, N)
            logits = logits + (row_gain * rel_pos.query_mask[:, None].to(q.dtype))[..., None]
        return logits

    def forward(self, x: Tensor, rel_pos: RelPos | None = None) -> Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.rpe_k is not None:
            if rel_pos is None:
                raise ValueError("this attention layer has an iRPE table and needs a RelPos input")
            bias = self.relative_logits(q, rel_pos)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        rpe: bool = False,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rpe=rpe)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor, rel_pos: RelPos | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rel_pos))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_mae_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_patch_embed_(proj: nn.Conv2d) -> None:
    """Initialise the patch projection like a linear layer (xavier on its flattened weight), as MAE does."""
    with torch.no_grad():
        w = proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
