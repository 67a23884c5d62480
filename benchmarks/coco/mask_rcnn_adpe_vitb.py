# Mask R-CNN + AdPE ViT-B/16 on COCO, as the AdPE release's detection/mask_rcnn_vitdet_b_100ep.py trains it
# (ViTDet's recipe in _base_/vitdet_b.py): 64 images per step, 184,375 iterations (100 epochs), warm-up 250 from
# x0.001, lr = 1e-4 (detectron2's ViTDet AdamW) x [0.5, 0.05, 0.005] with steps at 163,889 and 177,546 (the
# release's lr_multiplier values; ViTDet's own are [1, 0.1, 0.01]), 4conv+1fc box head and mask head with LN.
# Published: protocol coco_mask_rcnn (adpe/report/published.json) has the paper's MAE row only; AdPE's COCO
# numbers are Cascade Mask R-CNN's (protocol coco_cascade, cascade_mask_rcnn_adpe_vitb.py).
#   tools/dist_train.sh benchmarks/coco/mask_rcnn_adpe_vitb.py 8 --cfg-options model.backbone.init_cfg.checkpoint=PATH
# The backbone follows the checkpoint: iRPE tables for RPE models, else ViTDet's zero-initialised decomposed
# relative position bias.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', './_base_/vitdet_b.py']
model = dict(
    data_preprocessor={{_base_.vitdet_preprocessor}},
    backbone={{_base_.vitdet_backbone}},
    neck={{_base_.vitdet_neck}},
    rpn_head=dict(num_convs=2),
    roi_head=dict(bbox_head={{_base_.vitdet_box_head}}, mask_head=dict(norm_cfg={{_base_.norm_cfg}})),
)
optim_wrapper = dict(optimizer=dict(lr=1e-4 * 0.5))
