# ImageNet-1k fine-tuning of a pretrained ViT-B/16, the release's recipe (its README and main_finetune.py, MAE's
# fine-tuning): 100 epochs, effective batch 1024 (APE models; RPE models: finetune_adpe_vitb_rpe.py, batch 4096),
# AdamW (0.9, 0.999), lr = base lr 5e-4 x batch / 256 (the release sweeps the base lr in [1e-4, 1e-3]), weight
# decay 0.05, layer decay 0.65, drop path 0.1, RandAugment m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, label
# smoothing 0.1, random erasing 0.25, 5 warm-up epochs, cosine to 1e-6 x each group's layer-decay scale, global
# average pooling + fc_norm.
# Published: protocol imagenet_ft (adpe/report/published.json; the release README, 400 pretraining epochs).
#   tools/dist_train.sh benchmarks/imagenet/finetune_adpe_vitb.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PATH
# PATH: our pretraining checkpoint, an exported backbone, or an MAE / AdPE release checkpoint (MAE's ViT-B
# follows the same recipe). The data, transforms, mixup / cutmix, loss and top-1 / top-5 metric are mmpretrain's.
_base_ = ['mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py', 'mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['adpe.mm'], allow_failed_imports=False)
# Records the backbone's resolved 'auto' settings in the saved config; EffectiveBatchHook keeps effective_batch
# images per optimiser step on any GPU count by gradient accumulation (8 GPUs x 128 images: 1 step).
# EMA of the weights (optional in the release's recipe): add dict(type='EMAHook', momentum=1e-4) (mmengine's
# hook; decay 0.9999) to this list.
custom_hooks = [dict(type='ResolvedBackboneHook'), dict(type='EffectiveBatchHook'), dict(type='NonFiniteLossHook'),
                dict(type='WorkDirLockHook'), dict(type='TestRecordsHook')]
effective_batch = 1024
# The alternative, --auto-scale-lr: lr x (GPUs x batch_size) / base_batch_size, no accumulation.
auto_scale_lr = dict(enable=False, base_batch_size=effective_batch)
base_lr = 5e-4

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='AdPEViT',
        size='base',
        img_size=224,
        mode='cls',
        pool='avg',
        # 'auto' in cls mode: the checkpoint's iRPE tables (continuous lookup after RPE-coordinate pretraining)
        # when it has them, as the release's --pe_type 1 / 2; else no relative term (--pe_type 0, MAE).
        rel_pos='auto',
        rpe_lookup='auto',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=None),
    ),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=2e-5)],  # MAE's head init
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader
# mmpretrain's Accuracy that also keeps each image's top-5; TestRecordsHook writes them beside the test results
# (test_records.npz: the report's intervals and paired deltas, docs/statistics.md)
val_evaluator = dict(type='RecordedAccuracy', topk=(1, 5))
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='AutoAmpOptimWrapper',  # bf16 autocast on CPUs and bf16 GPUs, fp16 + dynamic loss scale on older GPUs
    optimizer=dict(type='AdamW', lr=base_lr * effective_batch / 256, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='AdPELayerDecayConstructor',
    # MAE's param_groups_lrd (util/lr_decay.py; the release's optimizer/lr_decay.py): 1-D tensors, pos_embed and
    # cls_token are not decayed; the iRPE tables of RPE models are (their no_weight_decay() lists only those two).
    paramwise_cfg=dict(layer_decay_rate=0.65, weight_decay_rule='mae'),
)
epochs = 100
warmup_epochs = 5
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    # MAE's end of the cosine (util/lr_sched.py, --min_lr 1e-6): each layer-decayed group ends at 1e-6 x its scale,
    # i.e. at 1e-6 / lr of its own start. A config that changes the lr writes its own ratio
    # (finetune_adpe_vitb_rpe.py); an lr given on the command line keeps this one (the end then scales with it).
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min_ratio=1e-6 / (base_lr * effective_batch / 256),
         by_epoch=True, begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=2, save_best='accuracy/top1'),
                     logger=dict(interval=100))
resume = True  # continue from the newest checkpoint in the work dir, if any
randomness = dict(seed=0, diff_rank_seed=True)
