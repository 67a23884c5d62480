"""Fixed 2-D sin-cos position embeddings (MAE layout), at integer or fractional grid coordinates.

Layout, kept exactly as MAE's released code so that stored tables match: for a D-dim embedding the first D/2
channels encode the column (x) coordinate and the last D/2 the row (y) coordinate; each half is
``[sin(t * w_k), cos(t * w_k)]`` with ``w_k = 10000 ** (-k / (D / 4))``, k = 0 .. D/4 - 1; a zero row is
prepended for the cls token.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Embed scalar positions.

    positions: (...,) float; returns (..., dim) in the dtype of ``positions`` (float64 in, float64 out).
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    half = dim // 2
    omega = torch.arange(half, dtype=torch.float64, device=positions.device) / half
    omega = (1.0 / 10000**omega).to(positions.dtype)
    angles = positions[..., None] * omega
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_2d_at(coords: Tensor, dim: int) -> Tensor:
    """Embed 2-D grid coordinates, possibly fractional (differentiable in ``coords``).

    coords: (..., 2) as (row, col); returns (..., dim) with the column half first (MAE layout).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    return torch.cat([sincos_1d(coords[..., 1], dim // 2), sincos_1d(coords[..., 0], dim // 2)], dim=-1)


def grid_coords(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """Integer (row, col) coordinates of a height x width patch grid in row-major order: (h*w, 2) float64."""
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device),
        indexing="ij",
    )
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


def sincos_2d_table(height: int, width: int, dim: int, cls_token: bool = True) -> Tensor:
    """The fixed table of a height x width grid: (h*w [+1], dim) float32, zero row first if ``cls_token``.

    Computed in float64 and rounded once, as MAE's numpy code does.
    """
    table = sincos_2d_at(grid_coords(height, width), dim)
    if cls_token:
        table = torch.cat([table.new_zeros(1, dim), table], dim=0)
    return table.float()


def resample_pos_embed(table: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resample a (1, 1 + h*w, D) APE table from ``grid`` to ``new_grid`` (bicubic, as MAE and mmseg do)."""
    if tuple(grid) == tuple(new_grid):
        return table
    return resample_abs_pos_embed(table, list(new_grid), list(grid), num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False)
