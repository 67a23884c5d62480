"""The ViT-B transfer optimisers against the rules that the published numbers came from, tensor by tensor.

Each test builds a config's optimiser as the Runner does (``Config.fromfile``, ``MODELS.build`` on the meta device,
``mmengine.optim.build_optim_wrapper``) and compares every tensor's lr and weight decay with a reference:

* ImageNet fine-tuning: MAE's ``util/lr_decay.py`` (``param_groups_lrd``, ``get_layer_id_for_vit``; the release's
  ``optimizer/lr_decay.py`` is the same), transcribed below;
* ADE20K: mmseg 1.2.2's ``LayerDecayOptimizerConstructor`` itself (the rule of mmseg 0.x that the release ran),
  run on our model's parameters under mmseg's MAE names;
* COCO: detectron2's ``solver/build.py`` ``get_default_optimizer_params`` and
  ``modeling/backbone/vit.py`` ``get_vit_lr_decay_rate`` with ViTDet's arguments, transcribed below (detectron2
  is not installed), run on our model's parameters under detectron2's names and module types.

Also here: the ADE20K backbone's layer scale (mmseg's MAE ``init_values=1.0``) and how checkpoints load into it,
and the end of the ImageNet cosine (MAE's ``util/lr_sched.py``).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("mmseg")
pytest.importorskip("mmdet")
pytest.importorskip("mmpretrain")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import MODELS, PARAM_SCHEDULERS, init_default_scope  # noqa: E402
from timm.layers import LayerNorm2d  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.checkpoint import CheckpointMismatchError, backbone_settings_of_trained  # noqa: E402
from adpe.models.backbone import block_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_APE = "benchmarks/imagenet/finetune_adpe_vitb.py"
IMAGENET_RPE = "benchmarks/imagenet/finetune_adpe_vitb_rpe.py"
ADE20K = "benchmarks/ade20k/upernet_adpe_vitb.py"
MASK_RCNN = "benchmarks/coco/mask_rcnn_adpe_vitb.py"
CASCADE = "benchmarks/coco/cascade_mask_rcnn_adpe_vitb.py"
# The backbone an RPE checkpoint resolves 'auto' to (the tests build without a checkpoint).
IRPE = dict(rel_pos="irpe", rpe_lookup="continuous")


# --------------------------------------------------------------------------------------------- helpers
def runner_optimizer(config: str, **backbone) -> tuple[Config, nn.Module, dict[int, tuple[float, float]]]:
    """The config, its model (meta device, no checkpoint) and {id(param): (lr, weight_decay)} of the optimiser
    that the Runner builds for it."""
    cfg = Config.fromfile(ROOT / config)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.update(init_cfg=None, **backbone)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper)).optimizer
    settings: dict[int, tuple[float, float]] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert id(param) not in settings, "a tensor in two groups"
            settings[id(param)] = (group["lr"], group["weight_decay"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(settings) == len(trainable) and all(id(p) in settings for p in trainable)
    return cfg, model, settings


class View(nn.Module):
    """A node of a renamed view of a model (``len`` as an ``nn.ModuleList`` has it)."""

    def __len__(self) -> int:
        return len(self._modules)


def renamed_view(model: nn.Module, rename, module_type=lambda module: View, root_type=View) -> nn.Module:
    """A module tree that holds ``model``'s parameter objects under the names ``rename(name)`` gives, each in a
    module of the class ``module_type(owner)`` (``owner``: the module of ``model`` that holds it); the
    intermediate modules are Views. Classes are instantiated without their ``__init__``: only their type counts."""
    owners = {}
    for module_name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            full = rename(f"{module_name}.{local}" if module_name else local)
            path, leaf = full.rpartition(".")[::2]
            owners.setdefault(path, (module_type(module), []))[1].append((leaf, param))
    root = root_type.__new__(root_type)
    nn.Module.__init__(root)
    for path in sorted(owners, key=lambda p: (p.count("."), p)):  # parents first
        node = root
        parts = path.split(".") if path else []
        for depth, part in enumerate(parts):
            if part not in node._modules:
                cls = owners[path][0] if depth == len(parts) - 1 else View
                child = cls.__new__(cls)
                nn.Module.__init__(child)
                node.add_module(part, child)
            node = node._modules[part]
        for leaf, param in owners[path][1]:
            node.register_parameter(leaf, param)
    return root


def substitute(rules):
    """A renaming function: the first matching (pattern, replacement) of ``rules``, else the name itself."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]

    def rename(name: str) -> str:
        for pattern, replacement in compiled:
            renamed, count = pattern.subn(replacement, name, count=1)
            if count:
                return renamed
        return name

    return rename


def compare(model: nn.Module, ours: dict, reference: dict, lr: float) -> list[str]:
    """Tensors whose (lr, weight decay) differ from the reference's {id: (lr_scale, weight_decay)} at base ``lr``."""
    wrong = []
    for name, param in model.named_parameters():
        got, (scale, decay) = ours[id(param)], reference[id(param)]
        if not (math.isclose(got[0], lr * scale, rel_tol=1e-9) and math.isclose(got[1], decay)):
            wrong.append(f"{name}: lr x{got[0] / lr:.6g}, wd {got[1]:g}; reference lr x{scale:.6g}, wd {decay:g}")
    return wrong


def report(wrong: list[str]) -> str:
    return f"{len(wrong)} tensors differ:\n  " + "\n  ".join(wrong[:40])


# ----------------------------------------------------------------------- ImageNet: MAE's util/lr_decay.py
# Transcribed from facebookresearch/mae util/lr_decay.py (= the AdPE release's optimizer/lr_decay.py).
def param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=(), layer_decay=0.75):
    param_group_names = {}
    param_groups = {}
    num_layers = len(model.blocks) + 1
    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # no decay: all 1D parameters and model-specific ones
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay = "no_decay"
            this_decay = 0.0
        else:
            g_decay = "decay"
            this_decay = weight_decay
        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)  # noqa: UP031
        if group_name not in param_group_names:
            this_scale = layer_scales[layer_id]
            param_group_names[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
            param_groups[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
        param_group_names[group_name]["params"].append(n)
        param_groups[group_name]["params"].append(p)
    return list(param_groups.values())


def get_layer_id_for_vit(name, num_layers):
    if name in ["cls_token", "pos_embed"]:
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    else:
        return num_layers


# Our ImageClassifier's names -> the MAE / release fine-tuning ViT's (models_vit.py: timm's VisionTransformer, the
# release's iRPE ViT with blocks.N.attn.rpe_k.lookup_table_weight).
MAE_NAMES = substitute([(r"^backbone\.", ""), (r"^head\.fc\.", "head.")])
# main_finetune.py: param_groups_lrd(model_without_ddp, args.weight_decay,
#     no_weight_decay_list=model_without_ddp.no_weight_decay(), layer_decay=args.layer_decay); timm 0.3.2's
# VisionTransformer.no_weight_decay() and the release's model/vision_transformer_irpe.py:288-289 both return:
MAE_NO_WEIGHT_DECAY = {"pos_embed", "cls_token"}


@pytest.mark.parametrize("config, backbone", [(IMAGENET_APE, {}), (IMAGENET_RPE, IRPE)], ids=["ape", "rpe"])
def test_imagenet_finetuning_is_maes_param_groups_lrd(config, backbone):
    cfg, model, ours = runner_optimizer(config, **backbone)
    if backbone:
        assert sum("rpe_k" in n for n, _ in model.named_parameters()) == 12
    mae = renamed_view(model, MAE_NAMES)
    groups = param_groups_lrd(mae, weight_decay=cfg.optim_wrapper.optimizer.weight_decay,
                              no_weight_decay_list=MAE_NO_WEIGHT_DECAY,
                              layer_decay=cfg.optim_wrapper.paramwise_cfg.layer_decay_rate)
    reference = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    wrong = compare(model, ours, reference, cfg.optim_wrapper.optimizer.lr)
    assert not wrong, report(wrong)


# MAE util/lr_sched.py adjust_learning_rate: after warm-up
#   lr = min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
# and each group gets lr * lr_scale (main_finetune.py: --min_lr 1e-6).
@pytest.mark.parametrize("config", [IMAGENET_APE, IMAGENET_RPE], ids=["ape", "rpe"])
def test_imagenet_cosine_ends_each_group_at_maes_min_lr_times_its_scale(config):
    cfg = Config.fromfile(ROOT / config)
    base, min_lr = cfg.optim_wrapper.optimizer.lr, 1e-6
    epochs, warmup = cfg.train_cfg.max_epochs, cfg.warmup_epochs
    scales = (1.0, 0.65**13)
    params = [nn.Parameter(torch.zeros(1)) for _ in scales]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": base * s} for p, s in zip(params, scales, strict=True)])
    # The config's schedulers, stepped once per epoch (convert_to_iter_based only refines the steps).
    schedulers = [PARAM_SCHEDULERS.build({**{k: v for k, v in s.items() if k != "convert_to_iter_based"},
                                          "optimizer": optimizer}) for s in cfg.param_scheduler]
    for epoch in range(epochs):
        if epoch >= warmup:
            mae = min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))
            for group, scale in zip(optimizer.param_groups, scales, strict=True):
                assert group["lr"] == pytest.approx(mae * scale, rel=1e-9), epoch
        for scheduler in schedulers:
            scheduler.step()


# --------------------------------------------------------------------- ADE20K: mmseg's constructor itself
MMSEG_MAE_CONFIG = "mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py"  # under mmseg's .mim/configs
# Our names -> mmseg's MAE UperNet's (mmseg/models/backbones/{mae,beit}.py, mmcv's FFN).
MMSEG_NAMES = substitute([
    (r"^backbone\.patch_embed\.proj\.", "backbone.patch_embed.projection."),
    (r"^backbone\.blocks\.(\d+)\.norm([12])\.", r"backbone.layers.\1.ln\2."),
    (r"^backbone\.blocks\.(\d+)\.attn\.rel_bias\.table$", r"backbone.layers.\1.attn.relative_position_bias_table"),
    (r"^backbone\.blocks\.(\d+)\.mlp\.fc1\.", r"backbone.layers.\1.ffn.layers.0.0."),
    (r"^backbone\.blocks\.(\d+)\.mlp\.fc2\.", r"backbone.layers.\1.ffn.layers.1."),
    (r"^backbone\.blocks\.(\d+)\.", r"backbone.layers.\1."),  # attn.qkv, attn.proj, gamma_1/2, iRPE attn.rpe_k
])


class MAE(View):
    """Stands for mmseg's ``MAE`` backbone: the constructor picks its layer-id rule by the class name."""


def mmseg_reference(model: nn.Module, cfg: Config) -> dict[int, tuple[float, float]]:
    """{id: (lr_scale, weight_decay)} from mmseg's LayerDecayOptimizerConstructor with mmseg's MAE recipe
    (paramwise_cfg num_layers, layer_decay_rate 0.65), run on ``model``'s parameters under mmseg's names."""
    from mmseg.engine.optimizers import LayerDecayOptimizerConstructor

    view = renamed_view(model, MMSEG_NAMES, lambda m: MAE if m is model.backbone else View)
    optimizer = dict(cfg.optim_wrapper.optimizer)
    constructor = LayerDecayOptimizerConstructor(
        dict(type="OptimWrapper", optimizer=optimizer),
        dict(num_layers=len(model.backbone.blocks), layer_decay_rate=cfg.optim_wrapper.paramwise_cfg.layer_decay_rate))
    params: list[dict] = []
    constructor.add_params(params, view)
    return {id(p): (g["lr"] / optimizer["lr"], g["weight_decay"]) for g in params for p in g["params"]}


@pytest.mark.parametrize("config, backbone", [(ADE20K, {}), (ADE20K, IRPE),
                                              ("benchmarks/ade20k/upernet_adpe_vitl.py", {})],
                         ids=["vitb", "vitb_irpe", "vitl"])
def test_ade20k_is_mmsegs_layer_decay_constructor_as_run(config, backbone):
    cfg, model, ours = runner_optimizer(config, **backbone)
    wrong = compare(model, ours, mmseg_reference(model, cfg), cfg.optim_wrapper.optimizer.lr)
    assert not wrong, report(wrong)
    # what the rule means here: pos_embed, cls_token and the relative-position tables are decayed
    decay = {n: ours[id(p)][1] for n, p in model.named_parameters()}
    assert decay["backbone.pos_embed"] == decay["backbone.cls_token"] == 0.05
    tables = [n for n in decay if n.endswith((".rel_bias.table", ".lookup_table_weight"))]
    assert len(tables) == len(model.backbone.blocks) and all(decay[n] == 0.05 for n in tables)
    assert all(decay[f"backbone.blocks.{i}.gamma_{j}"] == 0.0 for i in range(len(model.backbone.blocks))
               for j in (1, 2))


def test_ade20k_model_has_the_tensors_of_mmsegs_mae_upernet():
    """Our ADE20K ViT-B UperNet under mmseg's names is mmseg's MAE UperNet (its recipe's init_values=1.0: layer
    scale): the same 235 tensors (184 in the backbone), each of the same rank."""
    _, model, _ = runner_optimizer(ADE20K)
    import mmseg

    cfg = Config.fromfile(Path(mmseg.__file__).parent / ".mim" / "configs" / MMSEG_MAE_CONFIG)
    init_default_scope("mmseg")
    assert cfg.model.backbone.init_values == 1.0
    small = 32  # mmseg's model at a small width: the names and ranks do not depend on it
    cfg.model.backbone.update(embed_dims=small, num_heads=2, img_size=(64, 64))
    cfg.model.update(pretrained=None, neck=dict(cfg.model.neck, embed_dim=small))
    cfg.model.decode_head.update(in_channels=[small] * 4, channels=16)
    cfg.model.auxiliary_head.update(in_channels=small, channels=16)
    mmseg_model = MODELS.build(cfg.model)  # on the CPU: mmseg's MAE calls .item(), which meta tensors lack
    theirs = {n: p.ndim for n, p in mmseg_model.named_parameters()}
    ours = {MMSEG_NAMES(n): p.ndim for n, p in model.named_parameters()}
    assert ours == theirs
    assert len(ours) == 235 and sum(n.startswith("backbone.") for n in ours) == 184


# ------------------------------------------------------------------------------ COCO: detectron2's ViTDet
# Transcribed from facebookresearch/detectron2 detectron2/solver/build.py (get_default_optimizer_params; the
# final reduce_param_groups only merges groups of equal settings) and modeling/backbone/vit.py.
D2_NORM_MODULE_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    # NaiveSyncBatchNorm inherits from BatchNorm2d
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def get_default_optimizer_params(model, base_lr=None, weight_decay=None, weight_decay_norm=None, bias_lr_factor=1.0,
                                 weight_decay_bias=None, lr_factor_func=None, overrides=None):
    if overrides is None:
        overrides = {}
    defaults = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    bias_overrides = {}
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError("bias_lr_factor requires base_lr")
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if len(bias_overrides):
        if "bias" in overrides:
            raise ValueError("Conflicting overrides for 'bias'")
        overrides["bias"] = bias_overrides
    if lr_factor_func is not None:
        if base_lr is None:
            raise ValueError("lr_factor_func requires base_lr")
    norm_module_types = D2_NORM_MODULE_TYPES
    params = []
    memo = set()
    for module_name, module in model.named_modules():
        for module_param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad:
                continue
            # Avoid duplicating parameters
            if value in memo:
                continue
            memo.add(value)
            hyperparams = copy.copy(defaults)
            if isinstance(module, norm_module_types) and weight_decay_norm is not None:
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                hyperparams["lr"] *= lr_factor_func(f"{module_name}.{module_param_name}")
            hyperparams.update(overrides.get(module_param_name, {}))
            params.append({"params": [value], **hyperparams})
    return params


def get_vit_lr_decay_rate(name, lr_decay_rate=1.0, num_layers=12):
    layer_id = num_layers + 1
    if name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer_id = 0
        elif ".blocks." in name and ".residual." not in name:
            layer_id = int(name[name.find(".blocks.") :].split(".")[2]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


class D2LayerNorm(nn.Module):
    """detectron2/layers/batch_norm.py ``LayerNorm`` (get_norm's "LN": channels-first, a plain nn.Module), which
    ViTDet's simple feature pyramid and its box / mask heads use where ours have LayerNorm2d."""


# Our Mask R-CNN's names -> detectron2's (ViTDet: backbone.net = the ViT, backbone.simfp_* = the pyramid).
D2_NAMES = substitute([(r"^backbone\.", "backbone.net."), (r"^neck\.", "backbone.simfp."),
                       (r"^rpn_head\.", "proposal_generator.rpn_head."), (r"^roi_head\.", "roi_heads.")])


def d2_module_type(module: nn.Module) -> type:
    """The detectron2 module that ``module`` stands for: LayerNorm2d -> detectron2's LayerNorm; the ViT's
    nn.LayerNorm, convs and linears are the same torch modules there."""
    return D2LayerNorm if isinstance(module, LayerNorm2d) else type(module)


@pytest.mark.parametrize("config, backbone, differed", [(MASK_RCNN, {}, 119), (CASCADE, {}, None),
                                                        (MASK_RCNN, IRPE, None)],
                         ids=["mask_rcnn", "cascade", "mask_rcnn_irpe"])
def test_coco_is_detectron2_vitdet(config, backbone, differed):
    cfg, model, ours = runner_optimizer(config, **backbone)
    lr, layers = cfg.optim_wrapper.optimizer.lr, len(model.backbone.blocks)
    view = renamed_view(model, D2_NAMES, d2_module_type)
    # configs/common/optim.py AdamW: params=get_default_optimizer_params(base_lr, weight_decay_norm=0.0),
    # weight_decay=0.1; mask_rcnn_vitdet_b_100ep.py: lr_factor_func=partial(get_vit_lr_decay_rate, num_layers=12,
    # lr_decay_rate=0.7), overrides={"pos_embed": {"weight_decay": 0.0}}
    groups = get_default_optimizer_params(
        view, base_lr=lr, weight_decay_norm=0.0, overrides={"pos_embed": {"weight_decay": 0.0}},
        lr_factor_func=lambda name: get_vit_lr_decay_rate(
            name, lr_decay_rate=cfg.optim_wrapper.paramwise_cfg.layer_decay_rate, num_layers=layers))
    weight_decay = cfg.optim_wrapper.optimizer.weight_decay
    assert weight_decay == 0.1
    reference = {id(g["params"][0]): (g["lr"] / lr, g.get("weight_decay", weight_decay)) for g in groups}
    wrong = compare(model, ours, reference, lr)
    assert not wrong, report(wrong)
    decayed_not = {n for n, p in model.named_parameters() if ours[id(p)][1] == 0.0}
    assert decayed_not == {"backbone.pos_embed"} | {f"backbone.blocks.{i}.norm{j}.{w}" for i in range(layers)
                                                    for j in (1, 2) for w in ("weight", "bias")}
    if differed:  # the tensors that the 1-D / .bias / position-table rule of before exempted (recipe audit)
        assert sum(p.ndim == 1 or "rel_pos" in n for n, p in model.named_parameters()) - 2 * 2 * layers == differed


# -------------------------------------------------------------------------------- layer scale and loading
def tiny_backbone(**kw):
    from mmseg.registry import MODELS as SEG_MODELS

    init_default_scope("mmseg")
    backbone = SEG_MODELS.build({"type": "AdPEViT", "size": "tiny", "img_size": 112, "mode": "seg",
                                 "out_indices": (3,), "rel_pos": "none", **kw})
    backbone.init_weights()
    return backbone.eval()


def save_state(state: dict, path: Path) -> str:
    torch.save({"model": state}, path)
    return str(path)


def test_layer_scale_starts_at_one_from_checkpoints_without_it(tmp_path, random_timm_vit):
    """An MAE-like checkpoint has no gammas: they start at init_values (mmseg's MAE does the same), so the
    network is the checkpoint's own at the start."""
    path = save_state(random_timm_vit().state_dict(), tmp_path / "mae.pth")
    scaled = tiny_backbone(init_values=1.0, init_cfg=dict(type="Pretrained", checkpoint=path))
    plain = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=path))
    gammas = {n: p for n, p in scaled.named_parameters() if ".gamma_" in n}
    assert len(gammas) == 2 * 4 and all(torch.equal(g, torch.ones(192)) for g in gammas.values())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        for a, b in zip(block_outputs(scaled, x), block_outputs(plain, x), strict=True):
            torch.testing.assert_close(a, b)
    assert not any(".gamma_" in n for n, _ in plain.named_parameters())  # off unless asked for


def test_pretrained_layer_scale_loads_into_a_layer_scale_backbone_only(tmp_path, random_timm_vit,
                                                                       timm_block_outputs):
    reference = random_timm_vit(init_values=1e-5)  # random gammas (ls1.gamma, ls2.gamma) in every block
    path = save_state(reference.state_dict(), tmp_path / "timm_ls.pth")
    backbone = tiny_backbone(init_values=1.0, init_cfg=dict(type="Pretrained", checkpoint=path))
    assert torch.equal(backbone.blocks[2].gamma_2, reference.blocks[2].ls2.gamma)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ours = block_outputs(backbone, x)
    for a, b in zip(ours, timm_block_outputs(reference, x), strict=True):
        assert (a - b).abs().max() <= 1e-4
    with pytest.raises(CheckpointMismatchError, match=r"layer scale .*blocks\.0\.gamma_1.*init_values"):
        tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=path))


def test_trained_weights_load_only_into_the_layer_scale_they_were_trained_with():
    """mmengine's loaders are not strict: the backbone's own check refuses gammas it would drop, and a trained
    model without them; the inference tools rebuild the backbone as the weights say."""
    scaled, plain = tiny_backbone(init_values=1.0), tiny_backbone()
    with pytest.raises(CheckpointMismatchError, match=r"layer scale.*init_values=1\.0"):
        plain.load_state_dict(scaled.state_dict(), strict=False)
    with pytest.raises(CheckpointMismatchError, match=r"without layer scale.*init_values=None"):
        scaled.load_state_dict(plain.state_dict(), strict=False)
    for model, expected in ((scaled, 1.0), (plain, None)):
        state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
        assert backbone_settings_of_trained({"state_dict": state})["init_values"] == expected
