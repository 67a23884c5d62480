"""Learned relative position biases used when fine-tuning APE models (zero-initialised).

* ``RelPosBias``: one (num_heads) bias per 2-D offset plus three cls entries, per layer -- the BEiT-style
  bias of mmseg's MAE recipe.
* ``DecomposedRelPos``: ViTDet's decomposed bias, ``q . R_h[dh] + q . R_w[dw]`` with one head_dim table per
  axis, resized linearly when the grid differs from the one it was built for.
Both return additive attention logits for ``Attention``: (1 or B, H, N, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def relative_bias_index(height: int, width: int) -> Tensor:
    """Index into a ((2h-1)(2w-1) + 3)-entry table for (1 + h*w)^2 pairs; the last three entries are
    cls->token, token->cls and cls->cls. Returns (1 + h*w, 1 + h*w) long."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    d_row = rows.flatten()[:, None] - rows.flatten()[None, :] + height - 1
    d_col = cols.flatten()[:, None] - cols.flatten()[None, :] + width - 1
    grid_entries = (2 * height - 1) * (2 * width - 1)
    index = torch.empty(height * width + 1, height * width + 1, dtype=torch.long)
    index[1:, 1:] = d_row * (2 * width - 1) + d_col
    index[0, 1:] = grid_entries
    index[1:, 0] = grid_entries + 1
    index[0, 0] = grid_entries + 2
    return index


class RelPosBias(nn.Module):
    """Per-head learned bias for a fixed grid with a cls token first: logits (1, H, 1+h*w, 1+h*w)."""

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        self.grid = tuple(grid)
        entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        self.table = nn.Parameter(torch.zeros(entries, num_heads))
        self.register_buffer("index", relative_bias_index(*grid), persistent=False)

    def forward(self, q: Tensor, grid: tuple[int, int]) -> Tensor:
        if tuple(grid) != self.grid:
            raise ValueError(f"relative position bias was built for a {self.grid} grid, got {tuple(grid)}; "
                             "use slide inference with the training crop size")
        return self.table[self.index].permute(2, 0, 1)[None].to(q.dtype)


def _resized(table: Tensor, length: int) -> Tensor:
    """(2S-1, C) table resized linearly to (length, C), as ViTDet does for other input sizes."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.T[None], size=length, mode="linear", align_corners=False)[0].T


class DecomposedRelPos(nn.Module):
    """ViTDet's decomposed relative position term for queries and keys on the same (h, w) grid."""

    def __init__(self, grid: tuple[int, int], head_dim: int):
        super().__init__()
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, q: Tensor, grid: tuple[int, int]) -> Tensor:
        """q: (B, H, h*w, head_dim) -> (B, H, h*w, h*w)."""
        h, w = grid
        b, heads, n, c = q.shape
        coords_h, coords_w = torch.arange(h, device=q.device), torch.arange(w, device=q.device)
        r_h = _resized(self.rel_pos_h, 2 * h - 1)[coords_h[:, None] - coords_h[None, :] + h - 1]  # (h, h, C)
        r_w = _resized(self.rel_pos_w, 2 * w - 1)[coords_w[:, None] - coords_w[None, :] + w - 1]  # (w, w, C)
        r_q = q.reshape(b, heads, h, w, c)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h.to(q.dtype))
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w.to(q.dtype))
        return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, heads, n, n)
