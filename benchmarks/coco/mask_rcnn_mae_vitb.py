# The MAE baseline row: the same ViTDet recipe for an official MAE ViT-B checkpoint (mae_pretrain_vit_base.pth),
# with the decomposed relative position bias. Published: protocol coco_mask_rcnn (adpe/report/published.json).
_base_ = ['./mask_rcnn_adpe_vitb.py']
model = dict(backbone=dict(rel_pos='bias'))
