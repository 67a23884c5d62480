"""Adversarial position parameters (delta) and their projections.

The deltas are trained by gradient *ascent* on the MIM loss in the same backward pass as the network's
descent; after every optimiser step they are projected back onto a ball of radius ``radius`` in the chosen
norm. Which delta exists depends on the position kind and mode (docs/method.md):

=========  ==========  ====================================  ==================================================
position   mode        parameters                            effect (masked positions only)
=========  ==========  ====================================  ==================================================
ape        embedding   ``position``: (embed_dim,)            masked tokens carry delta instead of a mask token
ape        coordinate  ``position``: (2,) as (dx, dy)        sin-cos evaluated at (row + dy, col + dx)
rpe        embedding   ``encoder.i`` / ``decoder.i``:        every table entry read by a masked query gains
                       (head_dim,) per attention layer       delta
rpe        coordinate  ``encoder.i`` / ``decoder.i``:        offsets of masked queries shift by delta, read
                       (2,) as (d_row, d_col) per layer      through the continuous (bilinear) lookup
=========  ==========  ====================================  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from adpe.models.pos_embed import grid_coords, sincos_2d_at
from adpe.models.rpe import continuous_grid_lookups, grid_lookup
from adpe.models.vit import RelPos

Position = Literal["ape", "rpe"]
Mode = Literal["embedding", "coordinate"]
Norm = Literal["l2", "linf", "none"]
NORMS = ("l2", "linf", "none")


def ball_norm(delta: Tensor, norm: Norm) -> Tensor:
    """The norm that the projection bounds: L-inf for 'linf', L2 otherwise ('none' reports L2)."""
    return delta.detach().abs().max() if norm == "linf" else delta.detach().norm()


@torch.no_grad()
def project_(delta: Tensor, norm: Norm, radius: float) -> Tensor:
    """Project delta in place onto {d : ||d|| <= radius}: L2 rescales, L-inf clamps, 'none' leaves it."""
    if norm == "l2":  # rescale by min(1, radius / length), without reading the length back to the host
        delta.mul_(radius / delta.norm().clamp(min=radius))
    elif norm == "linf":
        delta.clamp_(-radius, radius)
    elif norm != "none":
        raise ValueError(f"unknown projection norm {norm!r}; use one of {NORMS}")
    return delta


@dataclass(frozen=True)
class RowGain:
    """RPE embedding mode: every table entry that a perturbed query reads gains delta, so every logit of its row
    gains ``q . delta``. delta: (head_dim,); query_mask: (B, N) float, 1 for perturbed query rows."""

    delta: Tensor
    query_mask: Tensor

    def __call__(self, q: Tensor) -> Tensor:
        """q: (B, H, N, head_dim) -> (B, H, N)."""
        return (q @ self.delta.to(q.dtype)) * self.query_mask[:, None].to(q.dtype)


class PositionAdversary(nn.Module):
    """All deltas of one model, plus the ball they live in.

    Every delta starts at zero (no perturbation), except the APE-embedding one, which replaces the mask token
    and starts like it, N(0, 0.02^2), as the release does.

    Args:
        position, mode: which row of the table above.
        embed_dim: encoder width (APE embedding mode).
        head_dims: (encoder head_dim, decoder head_dim) (RPE embedding mode).
        depths: (encoder depth, decoder depth) (RPE modes: one delta per attention layer).
        norm, radius: the projection ball.
    """

    def __init__(
        self,
        position: Position,
        mode: Mode,
        *,
        embed_dim: int,
        head_dims: tuple[int, int],
        depths: tuple[int, int],
        norm: Norm = "l2",
        radius: float = 1.0,
    ):
        super().__init__()
        if position not in ("ape", "rpe") or mode not in ("embedding", "coordinate"):
            raise ValueError(f"unknown adversary {position}/{mode}: position is 'ape' or 'rpe', "
                             "mode is 'embedding' or 'coordinate'")
        if norm not in NORMS:
            raise ValueError(f"unknown projection norm {norm!r}; use one of {NORMS}")
        if radius <= 0:
            raise ValueError(f"the projection radius must be positive, got {radius}")
        self.position_kind, self.mode, self.norm, self.radius = position, mode, norm, float(radius)
        if position == "ape" and mode == "embedding":
            # It takes the mask token's place, and starts like one: N(0, 0.02^2), as in the release.
            self.position = nn.Parameter(torch.randn(embed_dim) * 0.02)
        elif position == "ape":
            self.position = nn.Parameter(torch.zeros(2))
        else:
            enc_dim, dec_dim = head_dims if mode == "embedding" else (2, 2)
            self.encoder = nn.ParameterList([nn.Parameter(torch.zeros(enc_dim)) for _ in range(depths[0])])
            self.decoder = nn.ParameterList([nn.Parameter(torch.zeros(dec_dim)) for _ in range(depths[1])])

    # ------------------------------------------------------------ what the model asks of its adversary
    def masked_content(self, mask_token: Tensor | None) -> Tensor:
        """What masked patches carry before positions are added: delta in APE embedding mode, else the
        model's mask token. -> (1, 1, D)."""
        if self.position_kind == "ape" and self.mode == "embedding":
            return self.position.view(1, 1, -1)
        return mask_token

    def masked_positions(self, table: Tensor, grid: tuple[int, int]) -> Tensor:
        """The positions added to masked patches: the sin-cos table (1, L, D) itself, or in APE coordinate mode
        the sin-cos embedding at the grid shifted by delta = (dx, dy), also (1, L, D)."""
        if self.position_kind != "ape" or self.mode != "coordinate":
            return table
        coords = grid_coords(*grid, device=self.position.device) + self.position.flip(0).to(torch.float64)
        return sincos_2d_at(coords, table.shape[-1]).to(table.dtype)[None]

    def relative_positions(self, stack: str, grid: tuple[int, int], lookup: str, mask: Tensor) -> list[RelPos]:
        """Each layer's RelPos in the 'encoder' or 'decoder' stack of an RPE model; mask (B, L), 1 = masked.

        Coordinate mode: the offsets of masked queries shift by the layer's delta, read bilinearly. Embedding
        mode: the unperturbed ``lookup`` kind plus the layer's row gain for masked queries (never the cls row).
        """
        deltas = getattr(self, stack)
        if self.mode == "coordinate":  # one bilinear lookup per layer, for all layers at once
            lookups = continuous_grid_lookups(*grid, torch.stack(list(deltas)), shifted_queries=mask.bool())
            return [RelPos(lookup) for lookup in lookups]
        unperturbed = grid_lookup(*grid, lookup, device=mask.device)
        query_mask = torch.cat([mask.new_zeros(mask.shape[0], 1), mask], dim=1)  # cls first, never perturbed
        return [RelPos(unperturbed, RowGain(d, query_mask)) for d in deltas]

    def extra_repr(self) -> str:
        return f"{self.position_kind}/{self.mode}, norm={self.norm}, radius={self.radius}"

    @torch.no_grad()
    def project_(self) -> None:
        """Project every delta onto its ball (each per-layer delta separately)."""
        for delta in self.parameters():
            project_(delta, self.norm, self.radius)

    def max_norm(self) -> float:
        """Largest norm among the deltas, in the projection's norm: the logged ``adv_norm``."""
        return max(float(ball_norm(d, self.norm)) for d in self.parameters())
