"""Testing and inference with trained mmseg / mmdet models: tools/test.py's options, tools/infer.py.

``configure_test`` applies the options of mmseg's and mmdet's own ``tools/test.py`` (``--show-dir``, ``--tta``,
``--out``) to a config, through their pieces: the config's visualization hook and visualizer, its ``tta_model``
and ``tta_pipeline``, the metric's ``output_dir`` (mmseg) and ``DumpDetResults`` (mmdet). ``infer`` draws
predictions with ``MMSegInferencer`` / ``DetInferencer``. mmseg and mmdet are imported where they are used, so
that importing ``adpe.mm`` (pretraining included) does not load them.
"""

from __future__ import annotations

import copy
import os
import os.path as osp
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import MODELS

from adpe.checkpoint import backbone_settings_of_trained, fetch_checkpoint, load_checkpoint_file
from adpe.mm.lazy import registered_lazily

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def task_of(cfg: Config) -> str:
    """'mmseg' or 'mmdet': the library a config is written for (its ``default_scope``)."""
    scope = cfg.get("default_scope")
    if scope not in ("mmseg", "mmdet"):
        raise ValueError(f"default_scope {scope!r}: expected an mmseg or mmdet config (benchmarks/ade20k, /coco)")
    return scope


# ---------------------------------------------------------------------------------------------------------
# tools/test.py
# ---------------------------------------------------------------------------------------------------------
def configure_test(cfg: Config, *, show_dir: str | None = None, tta: bool = False, out: str | None = None) -> None:
    """Apply tools/test.py's ``--show-dir``, ``--tta`` and ``--out`` to ``cfg``, as mmseg's / mmdet's own do."""
    if show_dir:
        enable_visualization(cfg, show_dir)
    if tta:
        enable_tta(cfg)
    if out:
        dump_predictions(cfg, out)


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Draw every test prediction with the config's visualization hook (mmseg's ``SegVisualizationHook`` writes
    ``DIR/vis_data/vis_image/test_<image>_0.png``, mmdet's ``DetVisualizationHook`` ``DIR/<image>``).

    ``DIR`` is made absolute: mmdet's hook would otherwise put a relative one under ``WORK_DIR/TIMESTAMP``.
    """
    hook = cfg.get("default_hooks", {}).get("visualization")
    if hook is None:
        raise ValueError("--show-dir needs default_hooks.visualization (SegVisualizationHook / DetVisualizationHook)")
    hook["draw"] = True
    show_dir = osp.abspath(show_dir)
    if task_of(cfg) == "mmseg":
        hook["interval"] = 1  # mmseg's hook draws every 50th image by default; mmdet's draws all test images
        cfg.visualizer["save_dir"] = show_dir  # what mmseg's tools/test.py does
    else:
        hook["test_out_dir"] = show_dir  # what mmdet's tools/test.py does (trigger_visualization_hook)


def enable_tta(cfg: Config) -> None:
    """Test with the config's ``tta_pipeline`` and wrap the model in its ``tta_model`` (mmseg's ``SegTTAModel``,
    ``AdPEDetTTAModel`` for Mask R-CNN)."""
    missing = [key for key in ("tta_model", "tta_pipeline") if key not in cfg]
    if missing:
        raise ValueError(f"--tta needs {' and '.join(missing)} in the config (see benchmarks/*/*.py)")
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)


def dump_predictions(cfg: Config, out: str) -> None:
    """``--out``: mmseg writes one label PNG per image into the folder ``out`` (the IoU metric's ``output_dir``,
    in the dataset's label space: ADE20K's 0..150); mmdet dumps the predictions to the pickle ``out``
    (``DumpDetResults``, masks as RLE)."""
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
    if task_of(cfg) == "mmseg":
        for evaluator in evaluators:
            # keep_results as mmseg 1.2.2's tools/test.py sets it (IoUMetric accepts and ignores it)
            evaluator.update(output_dir=osp.abspath(out), keep_results=True)
        return
    if not out.endswith((".pkl", ".pickle")):
        raise ValueError(f"--out {out}: mmdet dumps predictions to a pickle file, name it *.pkl")
    cfg.test_evaluator = [*evaluators, dict(type="DumpDetResults", out_file_path=out)]


def describe_checkpoint(ckpt: dict) -> str:
    """What kind of file a checkpoint looks like, for an error message (pretraining, export, release, ...)."""
    state = ckpt.get("state_dict") if isinstance(ckpt.get("state_dict"), dict) else ckpt.get("model") or ckpt
    keys = [k for k in state if isinstance(k, str)]
    meta = ckpt.get("meta") or {}
    if "source" in meta and "position" in meta:
        return ("an exported backbone (tools/convert_checkpoint.py output): fine-tune it first, or pass it as "
                "model.backbone.init_cfg.checkpoint to train from it")
    if any(k.startswith("mae.") for k in keys) or ("model" in ckpt and "args" in ckpt):
        return ("a pretraining checkpoint: export its backbone (tools/convert_checkpoint.py) and fine-tune it, or "
                "pass it as model.backbone.init_cfg.checkpoint")
    return "a checkpoint of another model or config: check that CONFIG is the config this checkpoint was trained with"


def check_checkpoint_fits(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Raise ValueError when ``checkpoint`` leaves any of ``model``'s weights unset, naming them and saying what the
    file looks like, or holds a weight of another shape. mmengine loads test checkpoints non-strictly, skipping
    both with a warning only: a backbone export or a pretraining file would otherwise be evaluated as a randomly
    initialised model, and a mis-shaped table would keep its initial values."""
    ckpt = load_checkpoint_file(checkpoint, mmap=True)
    state = ckpt.get("state_dict") if isinstance(ckpt.get("state_dict"), dict) else ckpt
    present = {key.removeprefix("module."): value for key, value in state.items()}
    wanted = {key.removeprefix("module."): value for key, value in model.state_dict().items()}  # TTA wraps it
    missing = [key for key in wanted if key not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{checkpoint} leaves {len(missing)} of the model's {len(wanted)} weights unset "
                         f"({shown}): it looks like {describe_checkpoint(ckpt)}.")
    reshaped = [f"{key} {tuple(present[key].shape)} (the model's: {tuple(value.shape)})"
                for key, value in wanted.items() if tuple(present[key].shape) != tuple(value.shape)]
    if reshaped:
        hint = ""
        if any(entry.startswith("backbone.pos_embed ") for entry in reshaped):
            hint = (" A COCO model trained before the recipe learned ViTDet's 14 x 14 position table has one of "
                    "its input grid: test it with --cfg-options model.backbone.pos_embed_size=IMAGE_SIZE (e.g. "
                    "1024; docs/method.md, recipes).")
        raise ValueError(f"{checkpoint} holds {len(reshaped)} weights of another shape than this config's model: "
                         + "; ".join(reshaped[:5]) + "." + hint)


def _unflip_masks(masks: torch.Tensor, meta: dict) -> torch.Tensor:
    """Masks (N, H, W) of a flipped view, in the original image's orientation."""
    if not meta.get("flip"):
        return masks
    dims = {"horizontal": [-1], "vertical": [-2], "diagonal": [-2, -1]}[meta["flip_direction"]]
    return masks.flip(dims)


@registered_lazily(MODELS, "AdPEDetTTAModel")
def _det_mask_tta_class() -> type:
    """``tta_model=dict(type='AdPEDetTTAModel', tta_cfg=...)``: mmdet's ``DetTTAModel`` that merges instance masks
    too (mmdet 3.3.0's asserts there are none).

    Defined on first use: mmdet is imported here, not when ``adpe.mm`` is.
    """
    from mmcv.ops import batched_nms
    from mmdet.models.test_time_augs import DetTTAModel
    from mmengine.structures import InstanceData

    class DetMaskTTAModel(DetTTAModel):
        """Views merged as ``DetTTAModel`` merges boxes (un-flipped, NMS, ``max_per_img``); each kept box keeps
        its own view's mask, un-flipped."""

        def _merge_single_sample(self, data_samples):
            if data_samples[0].pred_instances.get("masks") is None:
                return super()._merge_single_sample(data_samples)
            preds = [sample.pred_instances for sample in data_samples]
            metas = [sample.metainfo for sample in data_samples]
            bboxes, scores = self.merge_aug_bboxes([p.bboxes for p in preds], [p.scores for p in preds], metas)
            labels = torch.cat([p.labels for p in preds])
            masks = torch.cat([_unflip_masks(p.masks, meta) for p, meta in zip(preds, metas, strict=True)])
            merged = data_samples[0]
            if bboxes.numel() == 0:
                return merged
            _, keep = batched_nms(bboxes, scores, labels, self.tta_cfg["nms"])
            keep = keep[: self.tta_cfg["max_per_img"]]
            merged.pred_instances = InstanceData(bboxes=bboxes[keep], scores=scores[keep], labels=labels[keep],
                                                 masks=masks[keep])
            return merged

    return DetMaskTTAModel


# ---------------------------------------------------------------------------------------------------------
# tools/infer.py
# ---------------------------------------------------------------------------------------------------------
def use_trained_backbone(cfg: Config, checkpoint: str | os.PathLike) -> None:
    """Build the config's AdPEViT backbone as the checkpoint's weights were trained (in place), with no
    pretrained init: every weight comes from the checkpoint, so the benchmark config serves as well as the
    run's saved one."""
    backbone = cfg.model.get("backbone", {})
    if backbone.get("type") == "AdPEViT":
        backbone.update(backbone_settings_of_trained(load_checkpoint_file(checkpoint)))
        backbone["init_cfg"] = None


def trained_model_config(config: str | os.PathLike | Config, checkpoint: str | os.PathLike) -> Config:
    """A copy of ``config`` (a path or a Config) whose backbone is built as the checkpoint was trained."""
    cfg = copy.deepcopy(config) if isinstance(config, Config) else Config.fromfile(str(config))
    use_trained_backbone(cfg, checkpoint)
    return cfg


def build_inferencer(config: str | os.PathLike | Config, checkpoint: str | os.PathLike, device: str | None = None):
    """mmseg's ``MMSegInferencer`` or mmdet's ``DetInferencer`` for a trained checkpoint (a path or a URL)."""
    checkpoint = fetch_checkpoint(checkpoint)  # a URL's cached copy: read twice, fetched once
    cfg = trained_model_config(config, checkpoint)
    if task_of(cfg) == "mmseg":
        from mmseg.apis import MMSegInferencer as Inferencer
    else:
        from mmdet.apis import DetInferencer as Inferencer
    return Inferencer(model=cfg, weights=str(checkpoint), device=device)


def image_files(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named by ``items``, folders expanded (their images, sorted)."""
    found = []
    for item in map(Path, items):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    return found


def infer(config: str | os.PathLike | Config, checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike],
          out_dir: str | os.PathLike, *, device: str | None = None, score_thr: float = 0.3) -> list[Path]:
    """Draw the model's predictions on ``images`` with the mm visualizers: class-coloured overlays (mmseg) or
    boxes, labels and masks with score >= ``score_thr`` (mmdet). Returns the drawings, ``OUT_DIR/vis/<image
    name>`` (mmseg also writes label PNGs to ``OUT_DIR/pred``)."""
    files = image_files(images)
    inferencer = build_inferencer(config, checkpoint, device)
    options = {"pred_score_thr": score_thr} if task_of(inferencer.cfg) == "mmdet" else {}
    inferencer([str(f) for f in files], out_dir=str(out_dir), **options)
    return [Path(out_dir) / "vis" / f.name for f in files]
