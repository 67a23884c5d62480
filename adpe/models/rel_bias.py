"""Learned relative position biases used when fine-tuning APE models (zero-initialised).

* ``RelPosBias``: one (num_heads) bias per 2-D offset plus three cls entries, per layer -- the BEiT-style
  bias of mmseg's MAE recipe.
* ``DecomposedRelPos``: ViTDet's decomposed bias, ``q . R_h[dh] + q . R_w[dw]`` with one head_dim table per
  axis, resized linearly when the grid differs from the one it was built for.
Both return additive attention logits for ``Attention``: (1 or B, H, N, N).
"""

from __future__ import annotations

import torch
from timm.layers.pos_embed_rel import gen_relative_position_index
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias
from torch import Tensor, nn


class RelPosBias(nn.Module):
    """Per-head learned bias for a fixed grid, with a cls token first or none: logits (1, H, N, N), N = [1 +] h*w."""

    def __init__(self, grid: tuple[int, int], num_heads: int, cls_token: bool = True):
        super().__init__()
        self.grid = tuple(grid)
        entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + (3 if cls_token else 0)
        self.table = nn.Parameter(torch.zeros(entries, num_heads))
        # N^2 indices; with a cls token the table's last three entries are cls->token, token->cls and cls->cls
        self.register_buffer("index", gen_relative_position_index(self.grid, class_token=cls_token),
                             persistent=False)

    def forward(self, q: Tensor, grid: tuple[int, int]) -> Tensor:
        if tuple(grid) != self.grid:
            raise ValueError(f"relative position bias was built for a {self.grid} grid, got {tuple(grid)}; "
                             "use slide inference with the training crop size")
        # Contiguous, as timm's Beit hands it to SDPA: the fused CUDA kernels read a mask whose last dim has unit
        # stride, and the bare permute would leave it at num_heads.
        return self.table[self.index].permute(2, 0, 1).contiguous()[None].to(q.dtype)


class DecomposedRelPos(nn.Module):
    """ViTDet's decomposed relative position term for queries and keys on the same (h, w) grid."""

    def __init__(self, grid: tuple[int, int], head_dim: int):
        super().__init__()
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, q: Tensor, grid: tuple[int, int]) -> Tensor:
        """q: (B, H, h*w, head_dim) -> (B, H, h*w, h*w)."""
        b, heads, n, _ = q.shape
        bias = get_decomposed_rel_pos_bias(q.flatten(0, 1), self.rel_pos_h, self.rel_pos_w, grid, grid)
        return bias.view(b, heads, n, n)
