# ImageNet-1k fine-tuning of an RPE-pretrained ViT-B/16 (MAE+ RPE, AdPE RPE embedding / coordinate): the APE
# recipe (finetune_adpe_vitb.py) with the release README's effective batch 4096 for RPE models, lr = 5e-4 x
# 4096 / 256. The backbone takes the checkpoint's iRPE tables, with the continuous lookup after RPE-coordinate
# pretraining (the release's --pe_type 2). Published: protocol imagenet_ft (adpe/report/published.json; the
# release README, 400 pretraining epochs).
#   tools/dist_train.sh benchmarks/imagenet/finetune_adpe_vitb_rpe.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ['./finetune_adpe_vitb.py']
effective_batch = 4096  # 8 GPUs x 128 images x 4 accumulation steps
auto_scale_lr = dict(base_batch_size=effective_batch)
base_lr = 5e-4  # the APE recipe's (a base's variables are not visible here)
optim_wrapper = dict(optimizer=dict(lr=base_lr * effective_batch / 256))
# The APE recipe's schedule with MAE's end for this lr: each group ends at 1e-6 x its layer-decay scale.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=95, eta_min_ratio=1e-6 / (base_lr * effective_batch / 256), by_epoch=True, begin=5, end=100,
         convert_to_iter_based=True),
]
