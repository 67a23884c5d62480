"""MAE and MAE+ (with optional adversarial positions) from one code path.

* MAE: the encoder sees only the visible patches; mask tokens are inserted before the decoder.
* MAE+ (AdPE paper): the encoder sees every patch; masked patches are replaced by a learned mask token before
  the encoder (SimMIM-like), the fixed sin-cos embedding is added to all tokens, plus a cls token; the
  decoder receives the whole encoder sequence. Positions are absolute (APE) or iRPE (RPE, with the sin-cos
  APE still added at the input); AdPE adds a ``PositionAdversary`` acting at masked positions only.

Conventions: images (B, 3, H, W); a grid of h x w patches, L = h*w, in row-major order; ``mask`` (B, L) float
with 1 = removed (masked), 0 = visible; the loss is the mean squared error on masked patches only.
"""

from __future__ import annotations

from numbers import Real
from typing import Literal

import torch
from timm.layers import PatchEmbed
from torch import Tensor, nn

from adpe.models.adversary import Mode, Norm, PositionAdversary
from adpe.models.pos_embed import sincos_2d_table
from adpe.models.rpe import check_lookup_kind, grid_lookup
from adpe.models.vit import Block, LayerNorm, RelPos, init_mae_weights, init_patch_embed_, vit_size


def check_mask_ratio(mask_ratio, length: int) -> int:
    """The number of visible patches ``int(length * (1 - mask_ratio))``, or a ValueError naming ``mask_ratio`` and
    its valid range: a number that masks at least one of the ``length`` patches and leaves one visible."""
    # A config value may be anything (--cfg-options model.mask_ratio=high gives a str): say what is valid.
    valid = f"a number with 0 < mask_ratio <= 1 - 1/{length} (at least one of {length} patches visible), e.g. 0.75"
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, Real):
        raise ValueError(f"mask_ratio must be {valid}; got {mask_ratio!r}")
    len_keep = int(length * (1 - mask_ratio))
    if not 0 < len_keep < length:
        raise ValueError(f"mask_ratio={mask_ratio} leaves {len_keep} of {length} patches visible; it must be {valid}")
    return len_keep


def random_masking(
    batch: int, length: int, mask_ratio: float, device=None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random masking by sorting uniform noise (MAE).

    Returns mask (B, L) float (1 = removed, exactly L - int(L * (1 - ratio)) ones per row), ids_restore
    (B, L) (inverse of the shuffle) and ids_keep (B, len_keep) (visible patches, in shuffled order).
    """
    len_keep = check_mask_ratio(mask_ratio, length)
    noise = torch.rand(batch, length, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :len_keep] = 0
    return mask.gather(1, ids_restore), ids_restore, ids_shuffle[:, :len_keep]


def patch_stats(patches: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch mean and std of (B, L, p*p*C) pixels, each (B, L, 1): the norm-pix target is
    (patches - mean) / std (MAE; the std is sqrt(unbiased var + 1e-6))."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5


class MaskedAutoencoder(nn.Module):
    """MAE / MAE+ / AdPE pretraining model.

    Args:
        size: a key of ``SIZES`` (or pass the ViTSize fields through ``size_overrides``).
        img_size: pretraining input side (112 for the MAE+ multi-crop recipe, 224 for MAE).
        variant: 'mae' (encoder on visible patches) or 'mae_plus' (encoder on all patches).
        position: 'ape' or 'rpe' (iRPE in every encoder and decoder attention layer; MAE+ only).
        rpe_lookup: 'discrete' or 'continuous' (bilinear); RPE coordinate mode needs 'continuous'.
        adversary: None, 'embedding' or 'coordinate' (MAE+ only); adv_norm / adv_radius: its ball.
        norm_pix_loss: regress per-patch normalised pixels (MAE's recommended target).
    """

    def __init__(
        self,
        size: str = "base",
        *,
        img_size: int = 112,
        in_chans: int = 3,
        variant: Literal["mae", "mae_plus"] = "mae_plus",
        position: Literal["ape", "rpe"] = "ape",
        rpe_lookup: Literal["discrete", "continuous"] = "discrete",
        adversary: Mode | None = None,
        adv_norm: Norm = "l2",
        adv_radius: float = 1.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        mlp_ratio: float = 4.0,
        **size_overrides,
    ):
        super().__init__()
        dims = vit_size(size, **size_overrides)
        self._check_options(variant, position, rpe_lookup, adversary)
        self.variant, self.position, self.rpe_lookup = variant, position, rpe_lookup
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.dims, self.mlp_ratio = dims, mlp_ratio
        self.patch_size, self.in_chans = dims.patch_size, in_chans
        self.grid = (img_size // dims.patch_size, img_size // dims.patch_size)
        check_mask_ratio(mask_ratio, self.grid[0] * self.grid[1])  # when the model is built, not at its first step
        rpe = position == "rpe"

        self.patch_embed = PatchEmbed(img_size, dims.patch_size, in_chans, dims.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims.embed_dim))
        table = sincos_2d_table(*self.grid, dims.embed_dim)[None]
        self.pos_embed = nn.Parameter(table, requires_grad=False)  # fixed; stored as in MAE checkpoints
        if adversary == "embedding" and position == "ape":  # delta takes the mask token's place
            self.register_parameter("mask_token", None)
        else:  # MAE inserts its mask token in the decoder (decoder width), MAE+ before the encoder.
            width = dims.decoder_embed_dim if variant == "mae" else dims.embed_dim
            self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(
            # The release's pretraining attention scales the query for q . r too (docs/method.md).
            Block(dims.embed_dim, dims.num_heads, mlp_ratio, rpe=rpe, rpe_query_scale=True) for _ in range(dims.depth)
        )
        self.norm = LayerNorm(dims.embed_dim)

        self.decoder_embed = nn.Linear(dims.embed_dim, dims.decoder_embed_dim)
        dec_table = sincos_2d_table(*self.grid, dims.decoder_embed_dim)[None]
        self.decoder_pos_embed = nn.Parameter(dec_table, requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(dims.decoder_embed_dim, dims.decoder_num_heads, mlp_ratio, rpe=rpe, rpe_query_scale=True)
            for _ in range(dims.decoder_depth)
        )
        self.decoder_norm = LayerNorm(dims.decoder_embed_dim)
        self.decoder_pred = nn.Linear(dims.decoder_embed_dim, dims.patch_size**2 * in_chans)

        self.adversary = None
        if adversary is not None:
            self.adversary = PositionAdversary(
                position,
                adversary,
                embed_dim=dims.embed_dim,
                head_dims=(dims.embed_dim // dims.num_heads, dims.decoder_embed_dim // dims.decoder_num_heads),
                depths=(dims.depth, dims.decoder_depth),
                norm=adv_norm,
                radius=adv_radius,
            )
        self._init_weights()

    @staticmethod
    def _check_options(variant, position, rpe_lookup, adversary) -> None:
        if variant not in ("mae", "mae_plus"):
            raise ValueError(f"variant must be 'mae' or 'mae_plus', got {variant!r}")
        if position not in ("ape", "rpe"):
            raise ValueError(f"position must be 'ape' or 'rpe', got {position!r}")
        check_lookup_kind(rpe_lookup)
        if variant == "mae" and (position == "rpe" or adversary is not None):
            raise ValueError("plain MAE is the APE baseline without adversary; use variant='mae_plus' "
                             "for RPE or adversarial positions")
        if position == "rpe" and adversary == "coordinate" and rpe_lookup != "continuous":
            raise ValueError("RPE coordinate mode shifts offsets by fractional amounts: set "
                             "rpe_lookup='continuous'")
        if position == "rpe" and adversary == "embedding" and rpe_lookup != "discrete":
            raise ValueError("RPE embedding mode is defined on the discrete lookup: set rpe_lookup='discrete'")

    def _init_weights(self) -> None:
        init_patch_embed_(self.patch_embed.proj)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_mae_weights)  # linears and norms; the patch projection was initialised above

    # ---------------------------------------------------------------- patches and masks
    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, h*p, w*p) -> (B, h*w, p*p*C), patch pixels in (row, col, channel) order as MAE."""
        b, c, hp, wp = imgs.shape
        p = self.patch_size
        h, w = hp // p, wp // p
        x = imgs.reshape(b, c, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, h * w, p * p * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p) on this model's grid; inverse of ``patchify``."""
        b = x.shape[0]
        (h, w), p, c = self.grid, self.patch_size, self.in_chans
        x = x.reshape(b, h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, h * p, w * p)

    def random_masking(self, batch: int, device=None, generator=None) -> tuple[Tensor, Tensor, Tensor]:
        return random_masking(batch, self.grid[0] * self.grid[1], self.mask_ratio, device, generator)

    # ---------------------------------------------------------------- positions
    def _stack_rel_pos(self, mask: Tensor, stack: str, depth: int) -> list[RelPos | None]:
        """The RelPos input of each layer of the 'encoder' or 'decoder' stack (None for APE models)."""
        if self.position != "rpe":
            return [None] * depth
        if self.adversary is not None:
            return self.adversary.relative_positions(stack, self.grid, self.rpe_lookup, mask)
        return [RelPos(grid_lookup(*self.grid, self.rpe_lookup, device=mask.device))] * depth

    # ---------------------------------------------------------------- encoder / decoder
    def embed_masked(self, imgs: Tensor, mask: Tensor) -> Tensor:
        """MAE+ input: patches, masked ones replaced; positions added; cls first. -> (B, 1+L, D)."""
        x = self.patch_embed(imgs)
        masked = mask[..., None].bool()
        content, pos = self.mask_token, self.pos_embed[:, 1:]
        masked_pos = pos
        if self.adversary is not None:  # it may change what masked patches carry and where they sit
            content = self.adversary.masked_content(content)
            masked_pos = self.adversary.masked_positions(pos, self.grid)
        x = torch.where(masked, content.to(x.dtype), x) + torch.where(masked, masked_pos, pos)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def embed_visible(self, imgs: Tensor, ids_keep: Tensor) -> Tensor:
        """MAE input: visible patches only, with their positions; cls first. -> (B, 1+len_keep, D)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward_encoder(self, imgs: Tensor, mask: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """-> latent (B, 1+L, D) for MAE+, (B, 1+len_keep, D) for MAE; after the final norm."""
        if self.variant == "mae":
            x = self.embed_visible(imgs, ids_keep)
        else:
            x = self.embed_masked(imgs, mask)
        for block, rel_pos in zip(self.blocks, self._stack_rel_pos(mask, "encoder", len(self.blocks)), strict=True):
            x = block(x, rel_pos)
        return self.norm(x)

    def forward_decoder(self, latent: Tensor, mask: Tensor, ids_restore: Tensor | None = None) -> Tensor:
        """latent -> per-patch predictions (B, L, p*p*C)."""
        x = self.decoder_embed(latent)
        if self.variant == "mae":
            n_masked = ids_restore.shape[1] + 1 - x.shape[1]
            mask_tokens = self.mask_token.expand(x.shape[0], n_masked, -1)
            patches = torch.cat([x[:, 1:], mask_tokens.to(x.dtype)], dim=1)
            patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :1], patches], dim=1)
        x = x + self.decoder_pos_embed
        for block, rel_pos in zip(
            self.decoder_blocks, self._stack_rel_pos(mask, "decoder", len(self.decoder_blocks)), strict=True
        ):
            x = block(x, rel_pos)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over masked patches of the per-patch mean squared error (normalised pixels if set)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, std = patch_stats(target)
            target = (target - mean) / std
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self, imgs: Tensor, mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """imgs (B, C, H, W) -> {'loss': scalar, 'pred': (B, L, p*p*C), 'mask': (B, L)}.

        A given ``mask`` (MAE+ only) replaces the random one, e.g. to compare models on the same masking.
        """
        expected = (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
        if tuple(imgs.shape[-2:]) != expected:
            raise ValueError(f"input is {tuple(imgs.shape[-2:])} but this model was built for {expected}")
        ids_restore = ids_keep = None
        if mask is None or self.variant == "mae":
            if mask is not None:
                raise ValueError("plain MAE draws its own mask (it needs the shuffle); pass mask=None")
            mask, ids_restore, ids_keep = self.random_masking(imgs.shape[0], imgs.device, generator)
        latent = self.forward_encoder(imgs, mask, ids_keep)
        pred = self.forward_decoder(latent, mask, ids_restore)
        return {"loss": self.forward_loss(imgs, pred, mask), "pred": pred, "mask": mask}
