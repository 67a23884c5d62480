_base_ = ['../demo/_base_demo.py']
# make study (tools/study_pipeline.yaml): the demo's tiny ViT pretrained long enough for transfer to see it, on the
# study's generated ImageNet (data/study/imagenet: 1280 train images of 64-80 px, their labels unused here).
# What differs from the demo, and why:
# - 56^2 crops with patch 8 (a 7 x 7 grid, the demo's token count): the study's images are small, so that a
#   2-core CPU makes a few thousand steps per variant in the study's time;
# - a longer schedule, a checkpoint kept at every quarter of it (the study's points: each is exported and
#   transferred as its own row) and the kNN monitor at the same points, on the val split (the study's choices
#   were made on val; test/ is evaluated once, by the transfer stages).
data_root = 'data/study/imagenet'
crop = 56
batch_size = 32
epochs = 16  # 16 x 1280 / 32 = 640 steps
quarter = epochs // 4
warmup_epochs = 2
model = dict(img_size=crop, patch_size=8)
train_dataloader = dict(batch_size=batch_size, dataset=dict(data_root=data_root, crop_size=crop))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=quarter, max_keep_ckpts=-1))
custom_hooks = [dict(type='EffectiveBatchHook'), dict(type='AdversaryHook'), dict(type='RandomStateHook'),
                dict(type='NonFiniteLossHook'), dict(type='WorkDirLockHook'),
                dict(type='KNNMonitorHook', data_root='pretraining', interval=quarter, at_start=True, resize=64)]
