"""COCO at real image shapes: every test input is padded to the square the backbone is built for, bottom-right and
with 0 after normalisation (detectron2's mean-pixel padding), while ``img_shape`` stays the resized image's, so
predicted boxes are clipped to the image and not to the padded square."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmdet")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.registry import DATASETS, MODELS, init_default_scope  # noqa: E402

import adpe.mm  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("benchmarks/coco/mask_rcnn_adpe_vitb.py", "benchmarks/coco/cascade_mask_rcnn_adpe_vitb.py",
           "benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py")
DEMO = ROOT / CONFIGS[-1]
# (width, height) of real COCO images: 4:3, 3:4, 3:2, a wide one and one far smaller than the test scale.
SHAPES = ((640, 480), (480, 640), (640, 427), (640, 213), (200, 150))
CLASSES = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon")


@pytest.fixture(autouse=True)
def _mmdet_scope():
    init_default_scope("mmdet")


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """COCO's layout with one val image per shape, each with one box-shaped instance."""
    root = tmp_path_factory.mktemp("coco_shapes")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, (w, h) in enumerate(SHAPES, 1):
        name = f"{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val2017" / name)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        x0, y0, bw, bh = w / 4, h / 4, w / 2, h / 2
        annotations.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": bw * bh,
                            "bbox": [x0, y0, bw, bh],
                            "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]]})
    categories = [{"id": c + 1, "name": n, "supercategory": "shape"} for c, n in enumerate(CLASSES)]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def coco_items(cfg: Config, root: Path) -> list[dict]:
    """The config's test dataset on ``root``, one item per image."""
    ds_cfg = cfg.test_dataloader.dataset
    ds_cfg.update(data_root=str(root) + "/", ann_file="annotations/instances_val2017.json",
                  data_prefix=dict(img="val2017/"), metainfo=dict(classes=CLASSES))
    dataset = DATASETS.build(ds_cfg)
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("config", CONFIGS)
def test_inputs_padded_to_the_square_with_the_mean(config, coco):
    cfg = Config.fromfile(ROOT / config)
    side = cfg.image_size[0]
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    for item, (w, h) in zip(coco_items(cfg, coco), SHAPES, strict=True):
        batch = preprocessor(pseudo_collate([item]), training=False)
        inputs, sample = batch["inputs"], batch["data_samples"][0]
        assert tuple(inputs.shape[-2:]) == (side, side)
        assert sample.ori_shape == (h, w)
        scale = side / max(w, h)  # Resize(scale=(side, side), keep_ratio=True)
        resized = (int(h * scale + 0.5), int(w * scale + 0.5))
        assert sample.img_shape == resized, "img_shape must be the resized image's, not the padded square's"
        padding = torch.ones(side, side, dtype=torch.bool)
        padding[: resized[0], : resized[1]] = False
        assert inputs[0][:, padding].abs().sum() == 0  # 0 after normalisation: the mean pixel
        assert inputs[0, :, : resized[0], : resized[1]].abs().sum() > 0


def test_predictions_stay_inside_the_image(coco):
    """A randomly initialised demo Mask R-CNN predicts boxes anywhere on its input; on the wide image three fifths
    of the input are padding, and every box must still lie inside the original image."""
    torch.manual_seed(0)
    cfg = Config.fromfile(DEMO)
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=100)
    model = MODELS.build(cfg.model).eval()
    items = coco_items(cfg, coco)
    with torch.no_grad():
        results = model.test_step(pseudo_collate(items))
    n_boxes = 0
    for result, (w, h) in zip(results, SHAPES, strict=True):
        boxes = result.pred_instances.bboxes
        n_boxes += len(boxes)
        assert boxes[:, 0::2].min() >= 0 and boxes[:, 1::2].min() >= 0
        assert boxes[:, 0::2].max() <= w + 1e-3 and boxes[:, 1::2].max() <= h + 1e-3, (w, h)
        assert result.pred_instances.masks.shape[-2:] == (h, w)
    assert n_boxes > 0
