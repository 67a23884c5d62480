# The MAE baseline row: the same ViTDet recipe for an official MAE ViT-B checkpoint (mae_pretrain_vit_base.pth),
# with the decomposed relative position bias (mmdet's ViTDet MAE ViT-B: 51.6 AP box / 45.7 AP mask).
_base_ = ['./mask_rcnn_adpe_vitb.py']
model = dict(backbone=dict(rel_pos='bias'))
