"""ViT backbone for transfer: classification, segmentation (UperNet) and detection (ViTDet-style Mask R-CNN) modes.

Parameter names match the pretraining model and MAE / AdPE releases (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.*``, ``blocks.N.attn.rpe_k.lookup_table_weight``), so converted checkpoints load
strictly.

* seg mode: cls token kept through the blocks; the maps of ``out_indices`` blocks are returned.
* det mode: no cls token; window attention with a few global blocks; the last block's map is returned
  (stride 16) for a simple feature pyramid.
* cls mode: one pooled feature (B, D) for an ImageNet head. ``pool='avg'`` averages the patch tokens and
  normalises the mean with ``fc_norm`` (MAE's and the release's fine-tuning ViT, timm's ``global_pool='avg'``);
  ``pool='cls'`` takes the cls token after the final norm (MAE's linear probe). The cls token is optional with
  average pooling (``class_token=False``). ``frozen=True`` fixes every weight and keeps the blocks in eval mode
  (linear probing).
Positions: the sin-cos APE (a learnable table, resampled bicubically to the input grid), plus optionally
``rel_pos='bias'`` (zero-initialised learned biases: BEiT-style in seg mode, ViTDet's decomposed one in det
mode) or ``rel_pos='irpe'`` (the pretrained iRPE tables, discrete or continuous lookup).
Layer scale (``init_values``, off by default): learnable per-channel ``blocks.N.gamma_1`` / ``gamma_2`` on the
residual branches, as mmseg's MAE backbone of the ADE20K recipe has them (``init_values=1.0``).
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from adpe.models.pos_embed import resample_pos_embed, sincos_2d_table
from adpe.models.rel_bias import DecomposedRelPos, RelPosBias
from adpe.models.rpe import check_lookup_kind, grid_lookup
from adpe.models.vit import Block, LayerNorm, RelPos, init_mae_weights, init_patch_embed_, vit_size
from adpe.structure import (
    REL_POS_KINDS,
    STRUCTURE_KEY,
    CheckpointMismatchError,
    decode_structure,
    encode_structure,
    structure_differences,
)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _settings(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def check_loaded_structure(module: ViTBackbone, state_dict: dict, prefix: str, *_) -> None:
    """Load-state-dict pre-hook of ViTBackbone: refuse weights trained with another relative-position structure.

    It raises instead of reporting an error message because mmengine's (and so mmseg's ``init_model``, the
    inferencers' and the runner's) checkpoint loading is non-strict and would only log it: iRPE tables would be
    dropped, or a continuous-lookup model run with the discrete lookup, silently. A state dict without the code
    (pretraining checkpoints, older fine-tuned ones) is accepted with the backbone's own code, unless it carries
    iRPE tables that a non-iRPE backbone would drop.
    """
    key, ours = prefix + STRUCTURE_KEY, module.structure()
    check_loaded_layer_scale(module, state_dict, prefix, trained=key in state_dict)
    if key not in state_dict:
        tables = [k for k in state_dict if k.startswith(prefix + "blocks.") and ".attn.rpe_k." in k]
        if tables and ours["rel_pos"] != "irpe":
            raise CheckpointMismatchError(
                f"the weights hold iRPE tables ({tables[0]}, ...) but the backbone has {_settings(ours)}, which would "
                "drop them: set model.backbone.rel_pos='irpe' (and the rpe_lookup it was trained with)")
        state_dict[key] = module.structure_code.clone()  # unknown structure: accepted
        return
    saved = decode_structure(state_dict[key])
    differences = structure_differences(saved, ours)
    if differences:
        fix = " ".join(f"model.backbone.{k}={saved[k]!r}" for k in differences)
        raise CheckpointMismatchError(
            f"the weights were trained with {_settings(saved)}, but this backbone has {_settings(ours)}. Build the "
            "model from the run's saved config (WORK_DIR/CONFIG_NAME.py, or the checkpoint's meta['cfg']), or set "
            f"--cfg-options {fix}")


def check_loaded_layer_scale(module: ViTBackbone, state_dict: dict, prefix: str, trained: bool) -> None:
    """Refuse layer-scale weights (``blocks.N.gamma_1/2``) that a backbone without layer scale would drop, and
    trained weights (``trained``: they carry the structure record) without them in a backbone with layer scale.
    Pretraining weights without gammas are accepted: the gammas keep their ``init_values``, as in mmseg's MAE."""
    gammas = [k for k in state_dict if k.startswith(prefix + "blocks.") and k.endswith((".gamma_1", ".gamma_2"))]
    if gammas and module.init_values is None:
        raise CheckpointMismatchError(
            f"the weights have layer scale ({gammas[0]}, ...) but the backbone has none (init_values=None), which "
            "would drop it: build the model from the run's saved config, or set --cfg-options "
            "model.backbone.init_values=1.0 (the weights' gammas replace the initial value)")
    if trained and not gammas and module.init_values is not None:
        raise CheckpointMismatchError(
            f"the weights were trained without layer scale, but this backbone has init_values={module.init_values}: "
            "build the model from the run's saved config, or set --cfg-options model.backbone.init_values=None")


MODES = ("cls", "seg", "det")
POOLS = ("avg", "cls")


def _class_token(mode: str, pool: str, requested: bool | None) -> bool:
    """Whether the token sequence starts with a cls token: always in seg mode (its maps follow the release's
    fine-tuning ViT), never in det mode (ViTDet), by default in cls mode, where only average pooling can do
    without it."""
    default = mode != "det"
    wanted = default if requested is None else bool(requested)
    if wanted != default and (mode != "cls" or pool == "cls"):
        raise ValueError(f"class_token={requested} is not possible in {mode!r} mode"
                         + (f" with pool={pool!r}" if mode == "cls" else "")
                         + ": seg mode always has a cls token, det mode never, cls mode needs one for pool='cls'")
    return wanted


class ViTBackbone(nn.Module):
    """ViT-{tiny,base,large,huge} backbone.

    Args:
        size: a key of ``adpe.models.vit.SIZES``.
        img_size: training input (h, w): sets the stored APE grid and the grids of learned biases.
        mode: 'cls', 'seg' or 'det' (see the module docstring).
        out_indices: blocks whose outputs are returned (seg mode; the other modes use the last block).
        pool, class_token: cls mode's pooled feature, 'avg' (fc_norm of the mean patch token) or 'cls' (the
            normalised cls token), and whether the sequence has a cls token (seg mode: always; det mode: never).
        frozen: no weight is trained and the blocks stay in eval mode (cls-mode linear probing).
        rel_pos: 'none', 'bias' or 'irpe'; rpe_lookup: 'discrete' or 'continuous' (models pretrained in RPE
            coordinate mode use 'continuous').
        rpe_query_scale: iRPE term ``q . r`` with the query scaled by head_dim^-1/2, as the tables were
            pretrained; False (default) uses the unscaled query, as the release's fine-tuning ViT does
            (docs/method.md, "Scaling of the relative term").
        window_size, global_blocks: det mode window attention (0 = all global).
        drop_path_rate: stochastic depth, increasing linearly to this value over the blocks.
        use_checkpoint: activation checkpointing of every block while training (saves memory).
        final_norm: apply the final LayerNorm to the returned maps' last block (seg / det modes).
        init_values: layer scale: learnable per-channel gammas on every block's attention and MLP branches,
            starting at this value (mmseg's MAE ``init_values``; the ADE20K recipe's 1.0). Checkpoints without
            gammas leave them at this value. None (default): no layer scale.
        pos_embed_size: the image size whose patch grid the learned APE table has; every forward resamples it
            (bicubic) to the input's grid. None (default): ``img_size``, the table is the input grid's. ViTDet
            learns the pretraining's 224^2 table (14 x 14) and resamples it to 64 x 64 in each forward
            (detectron2 ``ViT(pretrain_img_size=224)``, ``get_abs_pos``): the COCO recipes set 224.
    """

    def __init__(
        self,
        size: str = "base",
        *,
        img_size: int | tuple[int, int] = 512,
        in_chans: int = 3,
        mode: Literal["cls", "seg", "det"] = "seg",
        out_indices: tuple[int, ...] = (3, 5, 7, 11),
        pool: Literal["avg", "cls"] = "avg",
        class_token: bool | None = None,
        frozen: bool = False,
        rel_pos: Literal["none", "bias", "irpe"] = "none",
        rpe_lookup: Literal["discrete", "continuous"] = "discrete",
        rpe_query_scale: bool = False,
        window_size: int = 0,
        global_blocks: tuple[int, ...] = (),
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        final_norm: bool = False,
        init_values: float | None = None,
        pos_embed_size: int | tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
        **size_overrides,
    ):
        super().__init__()
        if mode not in MODES or rel_pos not in REL_POS_KINDS or pool not in POOLS:
            raise ValueError(f"mode must be one of {MODES}, rel_pos one of {REL_POS_KINDS} and pool one of {POOLS}; "
                             f"got {mode!r}, {rel_pos!r}, {pool!r}")
        check_lookup_kind(rpe_lookup)
        self.class_token = _class_token(mode, pool, class_token)
        dims = vit_size(size, **size_overrides)
        self.dims, self.mode, self.rel_pos, self.rpe_lookup = dims, mode, rel_pos, rpe_lookup
        self.rpe_query_scale = bool(rpe_query_scale)
        # Recorded in every state dict, checked by check_loaded_structure whatever loader is used.
        self.register_buffer(STRUCTURE_KEY, encode_structure(rel_pos, rpe_lookup, self.rpe_query_scale))
        self.register_load_state_dict_pre_hook(check_loaded_structure)
        self.embed_dim, self.patch_size = dims.embed_dim, dims.patch_size
        img_size = _pair(img_size)
        self.grid = (img_size[0] // dims.patch_size, img_size[1] // dims.patch_size)
        pos_size = img_size if pos_embed_size is None else _pair(pos_embed_size)
        self.pos_grid = (pos_size[0] // dims.patch_size, pos_size[1] // dims.patch_size)
        self.pool = pool
        self.out_indices = tuple(out_indices) if mode == "seg" else (dims.depth - 1,)
        if any(not 0 <= i < dims.depth for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} must lie in [0, {dims.depth})")
        self.use_checkpoint = use_checkpoint
        self.init_values = None if init_values is None else float(init_values)
        self._lookups: dict[tuple, RelPos] = {}  # (h, w, rpe_lookup, device) -> the unperturbed iRPE input

        self.patch_embed = PatchEmbed(img_size, dims.patch_size, in_chans, dims.embed_dim, strict_img_size=False)
        if self.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dims.embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d_table(*self.pos_grid, dims.embed_dim)[None])
        rates = torch.linspace(0, drop_path_rate, dims.depth, device="cpu").tolist()  # also under torch.device("meta")
        self.blocks = nn.ModuleList(
            self._block(i, rates[i], mlp_ratio, window_size, global_blocks) for i in range(dims.depth)
        )
        final_norm = (pool == "cls") if mode == "cls" else final_norm
        self.norm = LayerNorm(dims.embed_dim) if final_norm else None
        self.fc_norm = LayerNorm(dims.embed_dim) if mode == "cls" and pool == "avg" else None
        self.apply(init_mae_weights)  # MAE's scheme, for rows trained without a pretrained checkpoint
        init_patch_embed_(self.patch_embed.proj)
        if self.class_token:
            nn.init.normal_(self.cls_token, std=0.02)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.train(False)

    def train(self, mode: bool = True) -> ViTBackbone:
        """A frozen backbone stays in eval mode (no drop path), whatever its parent's mode."""
        return super().train(mode and not getattr(self, "frozen", False))

    def _block(self, index, drop_path, mlp_ratio, window_size, global_blocks) -> Block:
        dims = self.dims
        windowed = self.mode == "det" and window_size > 0 and index not in global_blocks
        grid = (window_size, window_size) if windowed else self.grid
        rel_bias = None
        if self.rel_pos == "bias":
            rel_bias = (DecomposedRelPos(grid, dims.embed_dim // dims.num_heads) if self.mode == "det"
                        else RelPosBias(grid, dims.num_heads, cls_token=self.class_token))
        return Block(dims.embed_dim, dims.num_heads, mlp_ratio, drop_path=drop_path,
                     rpe=self.rel_pos == "irpe", rpe_query_scale=self.rpe_query_scale, rel_bias=rel_bias,
                     window_size=window_size if windowed else 0, init_values=self.init_values)

    def structure(self) -> dict:
        """The relative-position settings that the weights depend on (recorded in ``structure_code``)."""
        return {"rel_pos": self.rel_pos, "rpe_lookup": self.rpe_lookup, "rpe_query_scale": self.rpe_query_scale}

    # ---------------------------------------------------------------- capabilities for optimisers
    @property
    def num_layers(self) -> int:
        """Layer-decay depth: the stem is layer 0, block i is layer i + 1, the rest is layer depth + 1."""
        return self.dims.depth + 2

    def layer_depth(self, name: str) -> int:
        """Layer id of the parameter ``name`` (relative to this module)."""
        if name.startswith(("patch_embed", "cls_token", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers - 1

    def no_weight_decay(self) -> set[str]:
        """timm's ``VisionTransformer.no_weight_decay()``, which MAE's and the release's fine-tuning pass to
        ``param_groups_lrd``: pos_embed and cls_token (the iRPE and relative-bias tables are decayed there).
        Which tensors a transfer optimiser exempts is its rule's choice (``adpe.optim.WEIGHT_DECAY_RULES``)."""
        return {n for n, _ in self.named_parameters(recurse=False) if n in ("pos_embed", "cls_token")}

    # ---------------------------------------------------------------- forward
    def _positions(self, grid: tuple[int, int]) -> Tensor:
        """The APE table resampled (bicubic) to ``grid``: (1, 1 + h*w, D)."""
        return resample_pos_embed(self.pos_embed, self.pos_grid, grid)

    def _irpe_inputs(self, grid: tuple[int, int], device) -> dict[tuple[int, int], RelPos]:
        """One iRPE lookup per attention grid in use (global grid, window grid), cls bucket in seg mode.

        Cached per grid and device: the lookups are constants of the grid.
        """
        grids = {grid} | {(b.window_size, b.window_size) for b in self.blocks if b.window_size}
        inputs = {}
        for h, w in grids:
            key = (h, w, self.rpe_lookup, str(device))
            if key not in self._lookups:
                self._lookups[key] = RelPos(grid_lookup(h, w, self.rpe_lookup, cls_token=self.class_token,
                                                        device=device))
            inputs[(h, w)] = self._lookups[key]
        return inputs

    def _fit_input(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """-> (the input the blocks see, the (h, w) patches that cover the given input).

        Seg mode takes any H x W: the input is zero-padded at the bottom / right to whole patches (as mmseg's ViT
        patch embedding, ``padding='corner'``), and a learned 'bias' backbone's input to at least the grid its
        table was built for. Zero is the mean pixel after normalisation, the value mmseg pads training crops with
        (``SegDataPreProcessor(size=crop_size)``). An input of whole patches (for 'bias', at least that grid) passes
        unchanged; 'bias' inputs larger than the grid are refused by ``RelPosBias``. (The benchmark configs pad test
        images to the crop before slide inference, so that every window is a full crop; this covers whole-image
        inference and other callers.) Other modes need multiples of the patch size.
        """
        p, (height, width) = self.patch_size, x.shape[-2:]
        covered = (-(-height // p), -(-width // p))
        if self.mode != "seg":
            if height % p or width % p:
                raise ValueError(f"input {height}x{width} is not a multiple of the patch size {p}")
            return x, covered
        grid = covered
        if self.rel_pos == "bias":  # RelPosBias holds one entry per offset of its own grid
            grid = (max(grid[0], self.grid[0]), max(grid[1], self.grid[1]))
        if (grid[0] * p, grid[1] * p) != (height, width):
            x = nn.functional.pad(x, (0, grid[1] * p - width, 0, grid[0] * p - height))
        return x, covered

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """x: (B, C, H, W) -> maps (B, D, ceil(H/p), ceil(W/p)), one per output; in cls mode the one pooled feature
        (B, D). H and W are multiples of the patch size, except in seg mode (``_fit_input``)."""
        b = x.shape[0]
        x, covered = self._fit_input(x)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        pos = self._positions(grid)
        x = self.patch_embed(x) + pos[:, 1:]
        if self.class_token:
            x = torch.cat([(self.cls_token + pos[:, :1]).expand(b, -1, -1), x], dim=1)
        irpe = self._irpe_inputs(grid, x.device) if self.rel_pos == "irpe" else {}
        outputs = []
        for index, block in enumerate(self.blocks):
            block_grid = (block.window_size, block.window_size) if block.window_size else grid
            rel_pos = irpe.get(block_grid)
            if self.use_checkpoint and self.training:
                x = checkpoint(block, x, rel_pos, grid, use_reentrant=False)
            else:
                x = block(x, rel_pos, grid)
            if index in self.out_indices:
                out = self._output(x, index, grid)
                outputs.append(out if covered == grid else out[..., :covered[0], :covered[1]])
        return tuple(outputs)

    def _output(self, x: Tensor, index: int, grid: tuple[int, int]) -> Tensor:
        """Block ``index``'s tokens (B, N, D) -> the pooled feature (B, D) in cls mode, else the map (B, D, h, w)."""
        if self.mode == "cls":
            if self.pool == "cls":
                return self.norm(x)[:, 0]
            return self.fc_norm(x[:, int(self.class_token):].mean(dim=1))
        y = self.norm(x) if self.norm is not None and index == len(self.blocks) - 1 else x
        y = y[:, int(self.class_token):]
        return y.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *grid)


def block_outputs(backbone: ViTBackbone, x: Tensor) -> list[Tensor]:
    """Every block's token output (cls first in seg mode), for parity checks: list of (B, N, D)."""
    saved = backbone.out_indices
    captured: list[Tensor] = []
    hooks = [blk.register_forward_hook(lambda _m, _i, out: captured.append(out)) for blk in backbone.blocks]
    try:
        backbone.out_indices = ()
        backbone(x)
    finally:
        backbone.out_indices = saved
        for hook in hooks:
            hook.remove()
    return captured
