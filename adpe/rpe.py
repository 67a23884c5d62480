"""iRPE relative positions: contextual mode, product method, on keys, one table shared by all heads.

Reference: Wu et al., "Rethinking and Improving Relative Position Encoding for Vision Transformer" (ICCV 2021).
The attention logit of query i and key j gains ``q_i . r_{b(i, j)}``, where r is a (head_dim, num_buckets)
table and b the bucket of the offset (query - key) on the patch grid; whether q is scaled first is the
attention's choice (``adpe.vit.Attention(rpe_query_scale=...)``). Conventions follow the AdPE release
exactly (docs/method.md), so released tables load unchanged:

* offsets are (d_row, d_col) = position of the query minus position of the key;
* magnitude ``m(|x|) = |x|`` if ``|x| <= alpha`` else ``alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha)``;
* discrete buckets round m and cap it at floor(beta) = 3, giving a 7 x 7 product grid (49 buckets) plus one
  bucket (49) for every pair that involves the cls token;
* the continuous lookup keeps m unrounded, clamps the signed value to [-beta, beta], divides by beta and
  samples the 7 x 7 table bilinearly as ``grid_sample(align_corners=False, padding_mode='zeros')`` does with
  the point given as (x = row value, y = col value) -- transposed with respect to the discrete layout, as the
  released code does.

A lookup is expressed as up to four (bucket id, weight) corners per (query, key) pair, so both kinds share
one gather: the discrete lookup is one corner of weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

ALPHA, BETA, GAMMA = 1.9, 3.8, 15.2


#: Buckets per axis of the product grid, 2 * floor(beta) + 1 = 7, and the table size: the grid plus one
#: bucket for the cls token (50).
GRID_SIDE = 2 * int(BETA) + 1
NUM_BUCKETS = GRID_SIDE**2 + 1


def piecewise_magnitude(x: Tensor) -> Tensor:
    """Signed, unrounded piecewise index of offsets x (any shape): identity inside +-alpha, log outside."""
    magnitude = x.abs()
    # clamp keeps log finite (and its gradient defined) where the identity branch is taken anyway.
    log_part = ALPHA + torch.log(magnitude.clamp(min=ALPHA) / ALPHA) / math.log(GAMMA / ALPHA) * (BETA - ALPHA)
    return torch.where(magnitude <= ALPHA, x, torch.sign(x) * log_part)


def discrete_index(x: Tensor) -> Tensor:
    """Integer piecewise index in [-floor(beta), floor(beta)] of integer-valued offsets x: long tensor."""
    m = piecewise_magnitude(x.double())
    return (torch.sign(m) * m.abs().round().clamp(max=int(BETA))).long()


def grid_offsets(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """(query - key) offsets between all cells of a height x width grid: (h*w, h*w, 2) as (d_row, d_col)."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()
    return pos[:, None, :] - pos[None, :, :]


@dataclass(frozen=True)
class Lookup:
    """Where every (query, key) pair reads the table.

    ids: (B or 1, N, N, K) long bucket ids; weights: same shape float, or None for K = 1 with weight 1.
    N counts the cls token when the lookup was built with ``cls_token=True``.
    """

    ids: Tensor
    weights: Tensor | None = None

    @cached_property
    def mixing(self) -> Tensor:
        """The lookup as a dense (B or 1, N, N, num_buckets) matrix of corner weights (differentiable in them).

        Built once per lookup: the blocks that share a lookup share it.
        """
        dense = self.weights.new_zeros(*self.ids.shape[:-1], NUM_BUCKETS)
        return dense.scatter_add(-1, self.ids, self.weights)


def _add_cls(values: Tensor, fill: float | int) -> Tensor:
    """Pad (B, n, n, K) to (B, n+1, n+1, K), the cls row and column filled with ``fill`` in corner 0."""
    b, n, _, k = values.shape
    out = values.new_zeros(b, n + 1, n + 1, k)
    out[..., 0] = fill
    out[:, 1:, 1:] = values
    return out


def discrete_lookup(height: int, width: int, cls_token: bool = True, device=None) -> Lookup:
    """Discrete product buckets of a grid: ids (1, N, N, 1)."""
    offsets = grid_offsets(height, width, device)
    side, half = GRID_SIDE, int(BETA)
    ids = (discrete_index(offsets[..., 0]) + half) * side + (discrete_index(offsets[..., 1]) + half)
    ids = ids[None, ..., None]
    if cls_token:
        ids = _add_cls(ids, NUM_BUCKETS - 1)
    return Lookup(ids)


def continuous_lookup(offsets: Tensor, cls_token: bool = True) -> Lookup:
    """Bilinear lookup at (possibly fractional) offsets, differentiable in ``offsets``.

    offsets: (B or 1, n, n, 2) as (d_row, d_col) between grid cells; returns ids and weights (B, N, N, 4).
    Corners that fall outside the 7 x 7 grid get weight 0 (grid_sample's zero padding).
    """
    side = GRID_SIDE
    scaled = piecewise_magnitude(offsets).clamp(-BETA, BETA) / BETA  # in [-1, 1]
    # grid_sample, align_corners=False: pixel = ((u + 1) * size - 1) / 2. x (row value) indexes table columns.
    pix = ((scaled + 1) * side - 1) / 2
    col_pix, row_pix = pix[..., 0], pix[..., 1]
    col0, row0 = col_pix.floor(), row_pix.floor()
    col_frac, row_frac = col_pix - col0, row_pix - row0
    ids, weights = [], []
    for dr, wr in ((0, 1 - row_frac), (1, row_frac)):
        for dc, wc in ((0, 1 - col_frac), (1, col_frac)):
            r, c = row0 + dr, col0 + dc
            inside = (r >= 0) & (r < side) & (c >= 0) & (c < side)
            ids.append((r.clamp(0, side - 1) * side + c.clamp(0, side - 1)).long())
            weights.append(wr * wc * inside)
    ids_t, weights_t = torch.stack(ids, dim=-1), torch.stack(weights, dim=-1)
    if cls_token:
        ids_t, weights_t = _add_cls(ids_t, NUM_BUCKETS - 1), _add_cls(weights_t, 1.0)
    return Lookup(ids_t, weights_t)


LOOKUP_KINDS = ("discrete", "continuous")


def check_lookup_kind(kind: str) -> str:
    """``kind`` if it names an iRPE lookup ('discrete': rounded buckets, 'continuous': bilinear), else an error."""
    if kind not in LOOKUP_KINDS:
        raise ValueError(f"unknown iRPE lookup {kind!r}: use 'discrete' or 'continuous' (models pretrained in "
                         "RPE coordinate mode use 'continuous')")
    return kind


def grid_lookup(height: int, width: int, kind: str, cls_token: bool = True, device=None) -> Lookup:
    """The unperturbed lookup of a grid: ``kind`` 'discrete' (rounded buckets) or 'continuous' (bilinear)."""
    if check_lookup_kind(kind) == "discrete":
        return discrete_lookup(height, width, cls_token=cls_token, device=device)
    return continuous_lookup(grid_offsets(height, width, device=device)[None], cls_token=cls_token)


# Above this many (query, key, bucket) entries a dense mixing matrix costs too much memory (256 MB in fp32).
DENSE_MIX_LIMIT = 64 * 2**20


def contextual_rpe(q: Tensor, table: Tensor, lookup: Lookup) -> Tensor:
    """Relative logits ``q_i . r_{b(i,j)}`` (bilinear mix of buckets for a continuous lookup).

    q: (B, H, N, head_dim); table: (1 or H, head_dim, num_buckets); returns (B, H, N, N). Projects q
    onto the few buckets first (cheap). A discrete lookup then gathers; a continuous one mixes the buckets with
    a dense weight matrix -- a small matmul whose backward avoids four slow scatter-adds -- unless that matrix
    would be too large (detection-size global attention), where it gathers its four corners.
    """
    b, h, n, _ = q.shape
    per_bucket = q @ table.to(q.dtype)  # (B, H, N, num_buckets)
    ids = lookup.ids
    if lookup.weights is None:
        return per_bucket.gather(-1, ids[..., 0][:, None].expand(b, h, n, n))
    if ids.shape[0] * n * n * per_bucket.shape[-1] <= DENSE_MIX_LIMIT:
        mixing = lookup.mixing.to(per_bucket.dtype)  # (B|1, N, N, K)
        return torch.einsum("bhik,bijk->bhij", per_bucket, mixing.expand(b, -1, -1, -1))
    out = 0
    for corner in range(ids.shape[-1]):
        picked = per_bucket.gather(-1, ids[..., corner][:, None].expand(b, h, n, n))
        out = out + picked * lookup.weights[..., corner][:, None].to(picked.dtype)
    return out


class KeyRPE(nn.Module):
    """One contextual iRPE table on keys, shared by all heads; zero-initialised.

    The parameter name ``lookup_table_weight`` and shape (1, head_dim, num_buckets) match released
    checkpoints (``blocks.N.attn.rpe_k.lookup_table_weight``).
    """

    def __init__(self, head_dim: int):
        super().__init__()
        self.lookup_table_weight = nn.Parameter(torch.zeros(1, head_dim, NUM_BUCKETS))

    def forward(self, q: Tensor, lookup: Lookup) -> Tensor:
        """q: (B, H, N, head_dim) -> relative logits (B, H, N, N)."""
        return contextual_rpe(q, self.lookup_table_weight, lookup)
