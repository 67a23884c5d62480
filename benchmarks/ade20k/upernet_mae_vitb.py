# The MAE baseline row: the same recipe for an official MAE ViT-B checkpoint (mae_pretrain_vit_base.pth),
# with mmseg's MAE lr 1e-4 and relative position bias. Published: protocols ade20k_ss and ade20k_msflip
# (MAE, MAE (mmseg)) in adpe/report/published.json.
#   tools/dist_train.sh benchmarks/ade20k/upernet_mae_vitb.py 8 --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ['./upernet_adpe_vitb.py']
model = dict(backbone=dict(rel_pos='bias'))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
