"""iRPE relative positions: contextual mode, product method, on keys, one table shared by all heads.

Reference: Wu et al., "Rethinking and Improving Relative Position Encoding for Vision Transformer" (ICCV 2021).
The attention logit of query i and key j gains ``q_i . r_{b(i, j)}``, where r is a (head_dim, num_buckets)
table and b the bucket of the offset (query - key) on the patch grid; whether q is scaled first is the
attention's choice (``adpe.models.vit.Attention(rpe_query_scale=...)``). Conventions follow the AdPE release
exactly (docs/method.md), so released tables load unchanged:

* offsets are (d_row, d_col) = position of the query minus position of the key;
* magnitude ``m(|x|) = |x|`` if ``|x| <= alpha`` else ``alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha)``;
* discrete buckets round m and cap it at floor(beta) = 3, giving a 7 x 7 product grid (49 buckets) plus one
  bucket (49) for every pair that involves the cls token;
* the continuous lookup keeps m unrounded, clamps the signed value to [-beta, beta], divides by beta and
  samples the 7 x 7 table bilinearly as ``grid_sample(align_corners=False, padding_mode='zeros')`` does with
  the point given as (x = row value, y = col value) -- transposed with respect to the discrete layout, as the
  released code does.

Two lookups, two ways of reading the table:

* ``Lookup`` (discrete): one bucket id per (query, key) pair, read by a gather.
* ``BilinearLookup`` (continuous): bilinear weights factor over the table's two axes, one from d_col and one
  from d_row, so the logits are two small batched matmuls (7 x 7 buckets -> key rows -> key columns) instead of
  a (N, N, 49) mixing tensor. A per-sample shift of some queries' offsets (RPE coordinate mode) only changes
  those queries' (key row, bucket) weights, which stay small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adpe.structure import LOOKUP_KINDS

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
    """Where every (query, key) pair reads the table (discrete lookups).

    ids: (1, N, N, 1) long bucket ids; N counts the cls token when the lookup was built with ``cls_token=True``.
    """

    ids: Tensor


@dataclass(frozen=True)
class BilinearLookup:
    """A continuous lookup on an h x w grid, factored over the table's two axes.

    col_weights: (B|1, L, w, 7), for each query cell and key column, the 1-D bilinear weights of the table's
        first axis (which the release samples with d_col);
    row_weights: (B|1, L, h, 7), the same for each key row and the table's second axis (sampled with d_row);
    cls_token: whether the attention sequence has a cls token first (N = 1 + L); every pair with it reads
        bucket 49 with weight 1.
    The bucket weight of pair (i, (r, c)) is ``col_weights[i, c, a] * row_weights[i, r, b]`` for bucket a * 7 + b.
    """

    col_weights: Tensor
    row_weights: Tensor
    cls_token: bool = True


def _add_cls(values: Tensor, fill: float | int) -> Tensor:
    """Pad (1, n, n, 1) to (1, n+1, n+1, 1), the cls row and column filled with ``fill``."""
    b, n, _, k = values.shape
    out = values.new_full((b, n + 1, n + 1, k), fill)
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


def bilinear_weights(offsets: Tensor) -> Tensor:
    """1-D weights (..., 7) with which an axis of the 7 x 7 table is sampled at (possibly fractional) offsets.

    The offset goes through the piecewise magnitude, is clamped to [-beta, beta] and mapped to a pixel position
    as grid_sample does with align_corners=False; each of the 7 cells gets the tent weight max(0, 1 - |pix - a|),
    which is linear interpolation between the two neighbouring cells with zeros outside the table.
    """
    scaled = piecewise_magnitude(offsets).clamp(-BETA, BETA) / BETA  # in [-1, 1]
    pix = ((scaled + 1) * GRID_SIDE - 1) / 2
    cells = torch.arange(GRID_SIDE, device=offsets.device, dtype=pix.dtype)
    return (1 - (pix[..., None] - cells).abs()).clamp(min=0)


def _axis_offsets(size: int, device, dtype: torch.dtype) -> Tensor:
    """(size, size) offsets query - key along one axis of the grid."""
    pos = torch.arange(size, device=device, dtype=dtype)
    return pos[:, None] - pos[None, :]


def continuous_grid_lookups(
    height: int,
    width: int,
    shifts: Tensor | None = None,
    shifted_queries: Tensor | None = None,
    cls_token: bool = True,
    device=None,
) -> list[BilinearLookup]:
    """Bilinear lookups of a grid: the unperturbed one, or one per shift (differentiable in it).

    shifts: None, or (S, 2) as (d_row, d_col) added to the offsets of every query flagged in ``shifted_queries``
    (B, L) bool (all queries when that is None). -> [1 lookup] or S lookups; for all S in one vectorised call.
    """
    device, dtype = (shifts.device, shifts.dtype) if shifts is not None else (device, torch.float32)
    rows, cols = _axis_offsets(height, device, dtype), _axis_offsets(width, device, dtype)  # (h, h), (w, w)
    query_row = torch.arange(height * width, device=device) // width  # which weights each query cell takes
    query_col = torch.arange(height * width, device=device) % width
    plain_row = bilinear_weights(rows)[query_row][None]  # (1, L, h, 7)
    plain_col = bilinear_weights(cols)[query_col][None]  # (1, L, w, 7)
    if shifts is None:
        return [BilinearLookup(plain_col, plain_row, cls_token)]
    moved_row = bilinear_weights(rows + shifts[:, 0, None, None])[:, query_row]  # (S, L, h, 7)
    moved_col = bilinear_weights(cols + shifts[:, 1, None, None])[:, query_col]  # (S, L, w, 7)
    lookups = []
    for row_w, col_w in zip(moved_row, moved_col, strict=True):
        if shifted_queries is not None:
            flags = shifted_queries[:, :, None, None]
            row_w, col_w = torch.where(flags, row_w, plain_row), torch.where(flags, col_w, plain_col)
        else:
            row_w, col_w = row_w[None], col_w[None]
        lookups.append(BilinearLookup(col_w, row_w, cls_token))
    return lookups


def check_lookup_kind(kind: str) -> str:
    """``kind`` if it names an iRPE lookup ('discrete': rounded buckets, 'continuous': bilinear), else an error."""
    if kind not in LOOKUP_KINDS:
        raise ValueError(f"unknown iRPE lookup {kind!r}: use 'discrete' or 'continuous' (models pretrained in "
                         "RPE coordinate mode use 'continuous')")
    return kind


def grid_lookup(height: int, width: int, kind: str, cls_token: bool = True, device=None) -> Lookup | BilinearLookup:
    """The unperturbed lookup of a grid: ``kind`` 'discrete' (rounded buckets) or 'continuous' (bilinear)."""
    if check_lookup_kind(kind) == "discrete":
        return discrete_lookup(height, width, cls_token=cls_token, device=device)
    return continuous_grid_lookups(height, width, cls_token=cls_token, device=device)[0]


def contextual_rpe(q: Tensor, table: Tensor, lookup: Lookup | BilinearLookup) -> Tensor:
    """Relative logits ``q_i . r_{b(i,j)}`` (bilinear mix of buckets for a continuous lookup).

    q: (B, H, N, head_dim); table: (1 or H, head_dim, num_buckets); returns (B, H, N, N). Projects q onto the
    few buckets first (cheap), then gathers (discrete) or mixes the buckets axis by axis (continuous).
    """
    per_bucket = q @ table.to(q.dtype)  # (B, H, N, num_buckets)
    if isinstance(lookup, BilinearLookup):
        return _read_bilinear(per_bucket, lookup)
    b, h, n, _ = per_bucket.shape
    return per_bucket.gather(-1, lookup.ids[..., 0][:, None].expand(b, h, n, n))


def _read_bilinear(per_bucket: Tensor, lookup: BilinearLookup) -> Tensor:
    """(B, H, N, num_buckets) per-bucket logits -> (B, H, N, N) through a ``BilinearLookup``.

    For query i: logits[i, (r, c)] = sum_{a, b} P[i, a, b] * col_weights[i, c, a] * row_weights[i, r, b], where P
    is its 7 x 7 grid of per-bucket logits; first over b (-> key rows), then over a (-> key columns).
    """
    b, h, n, _ = per_bucket.shape
    first = 1 if lookup.cls_token else 0
    cells, grid_rows, grid_cols = n - first, lookup.row_weights.shape[-2], lookup.col_weights.shape[-2]
    dtype = per_bucket.dtype
    grid = per_bucket[:, :, first:, :GRID_SIDE**2].reshape(b, h, cells, GRID_SIDE, GRID_SIDE)
    by_row = grid @ lookup.row_weights.to(dtype).transpose(-1, -2)[:, None]  # (B, H, L, 7 [a], h)
    logits = by_row.transpose(-1, -2) @ lookup.col_weights.to(dtype).transpose(-1, -2)[:, None]  # (B, H, L, h, w)
    logits = logits.reshape(b, h, cells, grid_rows * grid_cols)
    if not lookup.cls_token:
        return logits
    cls_bucket = per_bucket[..., NUM_BUCKETS - 1]  # (B, H, N): what each query reads for pairs with the cls token
    out = per_bucket.new_empty(b, h, n, n)
    out[:, :, 0] = cls_bucket[:, :, :1]
    out[:, :, 1:, 0] = cls_bucket[:, :, 1:]
    out[:, :, 1:, 1:] = logits
    return out


class KeyRPE(nn.Module):
    """One contextual iRPE table on keys, shared by all heads; zero-initialised.

    The parameter name ``lookup_table_weight`` and shape (1, head_dim, num_buckets) match released
    checkpoints (``blocks.N.attn.rpe_k.lookup_table_weight``).
    """

    def __init__(self, head_dim: int):
        super().__init__()
        self.lookup_table_weight = nn.Parameter(torch.zeros(1, head_dim, NUM_BUCKETS))

    def forward(self, q: Tensor, lookup: Lookup | BilinearLookup) -> Tensor:
        """q: (B, H, N, head_dim) -> relative logits (B, H, N, N)."""
        return contextual_rpe(q, self.lookup_table_weight, lookup)
