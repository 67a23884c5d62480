"""ViT blocks with one attention implementation: SDPA with an optional additive relative-position term.

Parameter names follow MAE / timm (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``) plus ``attn.rpe_k.lookup_table_weight`` for iRPE, so released checkpoints load by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from adpe.models.rpe import BilinearLookup, KeyRPE, Lookup

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class ViTSize:
    """Dimensions of a ViT and of its MAE decoder (the decoder fields matter for pretraining only)."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16


SIZES = {
    # Tiny: for tests and the CPU demo (matches the shape of the released-code parity fixture).
    "tiny": ViTSize(16, 192, 4, 3, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2),
    "base": ViTSize(16, 768, 12, 12),
    "large": ViTSize(16, 1024, 24, 16),
    "huge": ViTSize(14, 1280, 32, 16),
}


def vit_size(name: str, **overrides) -> ViTSize:
    """The dimensions of model size ``name`` (a key of :data:`SIZES`), with ``overrides`` applied."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(SIZES)}")
    return dataclasses.replace(SIZES[name], **overrides)


@dataclass(frozen=True)
class RelPos:
    """The relative-position input of one attention layer.

    lookup: where each (query, key) pair reads the iRPE table (N counts the cls token): discrete buckets or a
        bilinear lookup, per sample when masked queries' offsets are shifted (RPE coordinate mode).
    row_gain: optional ``q (B, H, N, head_dim) -> (B, H, N)``, added to every logit of its query's row (the
        RPE-embedding adversary of ``adpe.models.adversary``); it receives the query as the iRPE table does.
    """

    lookup: Lookup | BilinearLookup
    row_gain: Callable[[Tensor], Tensor] | None = None


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """SDPA with an additive logit mask: (B, H, N, head_dim) x3, (B|1, H, N, N) -> (B, H, N, head_dim).

    On CPU under bf16 autocast it runs in fp32: there the bf16 flash-attention backward is ~4x slower than the
    fp32 one for ViT-sized sequences (ViT-B MAE+ step: 0.59 s vs 0.13 s), and attention is a small share of
    the FLOPs.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            bias = bias.float() if bias is not None else None
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Multi-head self-attention through SDPA; relative terms enter as one additive logit mask.

    Args:
        rpe: own an iRPE table (``rpe_k``), read through the ``RelPos`` given to ``forward``.
        rpe_query_scale: multiply the query by head_dim^-1/2 in the iRPE term too, as the release's
            *pretraining* attention does; False adds ``q . r`` with the unscaled query, as its fine-tuning ViT
            does (docs/method.md, "Scaling of the relative term").
        rel_bias: a module ``(q, grid) -> logits`` (learned bias of ``adpe.models.rel_bias``), or None.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rpe: bool = False,
        rpe_query_scale: bool = False,
        rel_bias: nn.Module | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rpe_k = KeyRPE(self.head_dim) if rpe else None
        self.rpe_query_scale = rpe_query_scale
        self.rel_bias = rel_bias

    def relative_logits(self, q: Tensor, rel_pos: RelPos) -> Tensor:
        """q: (B, H, N, head_dim), unscaled -> additive logits (B, H, N, N).

        ``q . r`` takes the scaled query where ``rpe_query_scale`` is set (the release's pretraining model) and
        the unscaled one otherwise (its fine-tuning ViT); SDPA scales only ``q . k``.
        """
        if self.rpe_query_scale:
            q = q * self.head_dim**-0.5
        logits = self.rpe_k(q, rel_pos.lookup)
        if rel_pos.row_gain is not None:
            logits = logits + rel_pos.row_gain(q)[..., None]
        return logits

    def forward(self, x: Tensor, rel_pos: RelPos | None = None, grid: tuple[int, int] | None = None) -> Tensor:
        """x: (B, N, C) -> (B, N, C); ``grid`` is the (h, w) patch grid that ``rel_bias`` needs."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.rpe_k is not None:
            if rel_pos is None:
                raise ValueError("this attention layer has an iRPE table and needs a RelPos input")
            bias = self.relative_logits(q, rel_pos)
        if self.rel_bias is not None:
            extra = self.rel_bias(q, grid)
            bias = extra if bias is None else bias + extra
        x = attention(q, k, v, bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    With ``window_size > 0`` attention runs inside non-overlapping windows of the (h, w) token grid (ViTDet;
    the grid is padded to a multiple of the window); the input then holds grid tokens only, no cls token.
    With ``init_values`` (layer scale, as BEiT and mmseg's MAE backbone have it): x + gamma_1 * attn(norm1(x)),
    then x + gamma_2 * mlp(norm2(x)), with learnable per-channel ``gamma_1`` / ``gamma_2`` starting at
    ``init_values``; None (default): no layer scale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        rpe: bool = False,
        rpe_query_scale: bool = False,
        rel_bias: nn.Module | None = None,
        window_size: int = 0,
        init_values: float | None = None,
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, rpe=rpe, rpe_query_scale=rpe_query_scale, rel_bias=rel_bias
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        if init_values is not None:  # mmseg beit.py BEiTTransformerEncoderLayer: init_values * torch.ones(dim)
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: Tensor, rel_pos: RelPos | None = None, grid: tuple[int, int] | None = None) -> Tensor:
        """x: (B, N, C); ``grid`` (h, w) is required for windowed blocks and learned relative biases."""
        y = self.norm1(x)
        if self.window_size:
            b, _, c = y.shape
            windows, padded = window_partition(y.reshape(b, *grid, c), self.window_size)
            y = self.attn(windows, rel_pos, (self.window_size, self.window_size))
            y = window_unpartition(y, self.window_size, padded, grid).reshape(b, -1, c)
        else:
            y = self.attn(y, rel_pos, grid)
        if self.gamma_1 is None:
            x = x + self.drop_path(y)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma_1 * y)
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, h, w, C) -> windows (B * nh * nw, window * window, C), zero-padding h, w up to multiples of
    ``window``; also returns the padded (h, w)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(windows: Tensor, window: int, padded: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of ``window_partition``: (B * nh * nw, window * window, C) -> (B, h, w, C), padding removed."""
    (hp, wp), (h, w) = padded, grid
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, hp, wp, c)[:, :h, :w]


def compile_blocks(blocks: Iterable[nn.Module], options: bool | dict, on_cpu: bool = False) -> bool:
    """``torch.compile`` each transformer block in place when ``options`` asks for it (True, or a dict of
    torch.compile arguments) and a GPU is present, or ``on_cpu``; returns whether it did.

    Regional compilation: every block runs the same code, so one compiled graph serves all blocks of a kind
    (windowed, global) and compiling takes seconds, not minutes; ``Module.compile`` keeps the state-dict keys.
    Without a GPU the blocks stay eager: that is the CPU fallback, as inductor's CPU kernels are not what the
    switch is for and compiling them costs minutes on a small CPU.
    """
    if not options or not (on_cpu or torch.cuda.is_available()):
        return False
    for block in blocks:
        block.compile(**(options if isinstance(options, dict) else {}))
    return True


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
