# MAE+ / AdPE pretraining recipe (AdPE, arXiv 2303.07598, following MAE): AdamW betas (0.9, 0.95), weight
# decay 0.05 on every tensor of 2 or more dimensions -- cls and mask tokens included, as the release and MAE
# do -- and none on biases and 1-D parameters; lr = base_lr * effective_batch / 256 with base_lr 1.5e-4,
# per-iteration cosine schedule after a linear warm-up, 4 crops of 112^2 per image, mask ratio 0.75.
# In RPE models the attention adds q . r with the scaled query, as the release's pretraining model does.
# model.pretrained=PATH starts from a pretraining checkpoint (ours or an MAE / AdPE release), loaded strictly.
#
# effective_batch counts *images* per optimiser step over all GPUs and accumulation steps. EffectiveBatchHook
# sets the optimiser wrapper's accumulative_counts = effective_batch / (GPUs x batch_size) before training,
# however the run is launched, so the recipe holds on any number of GPUs; effective_batch = None keeps the
# config's optim_wrapper.accumulative_counts as they are.
data_root = 'data/imagenet'
effective_batch = 4096
batch_size = 64  # images per GPU per iteration (x num_crops crops through the model)
num_crops = 4
epochs = 400
warmup_epochs = 20
base_lr = 1.5e-4
base_adv_lr = 1.5e-4  # the adversary's own lr, scaled and scheduled like the main lr

custom_imports = dict(imports=['adpe.mm'], allow_failed_imports=False)
model = dict(
    type='AdPEPretrainer',
    size='base',
    img_size=112,
    variant='mae_plus',
    position='ape',
    mask_ratio=0.75,
    norm_pix_loss=True,
    compile=False,  # True: torch.compile the encoder and decoder blocks on GPU machines (CPU-only ones stay eager)
    # The adversary's projection of delta (AdPE configs, adversary='embedding' or 'coordinate'; unused without an
    # adversary): an L2 ball of radius 1 is this suite's choice. The release defaults to no projection (--norm 0,
    # --eps 1) and leaves the values used to the paper's supplementary; adv_norm='linf' or 'none' and any adv_radius
    # can be set in a config or with --cfg-options (docs/method.md, "Recipe decisions").
    adv_norm='l2',
    adv_radius=1.0,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='adpe_multicrop_collate'),
    # decode='device': the workers read bytes and the model's preprocessor decodes and crops on the GPU
    dataset=dict(type='AdPEImageFolder', data_root=data_root, num_crops=num_crops, crop_size=112, decode='cpu'),
)

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='AdPEOptimWrapperConstructor',
    # fused: one kernel for all parameters (a third of the unfused step's time on CPU; also on GPU)
    optimizer=dict(type='AdamW', lr=base_lr * effective_batch / 256, betas=(0.9, 0.95), weight_decay=0.05,
                   fused=True),
    paramwise_cfg=dict(adv_lr=base_adv_lr * effective_batch / 256),
)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=0.0, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs)

default_scope = 'mmengine'
default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
# NonFiniteLossHook: stop at the first NaN / inf loss (or 20 skipped fp16 steps in a row), naming the newest checkpoint.
# KNNMonitorHook: weighted kNN top-1 of the encoder's features (DINO's k = 20, T = 0.07) every 20 epochs, on 10
# train images per class as the bank and 10 val images per class as queries (10,000 each on ImageNet); off until
# given a labelled folder: --cfg-options custom_hooks.5.data_root=pretraining (the pretraining root's train/ and
# val/) or =PATH. One evaluation: 703 TFLOP (35.1 GFLOP per image, tools/knn_eval.py
# benchmarks/imagenet/linear_probe_adpe_vitb.py --cost 20000; README, Pretraining).
custom_hooks = [dict(type='EffectiveBatchHook'), dict(type='AdversaryHook'), dict(type='RandomStateHook'),
                dict(type='NonFiniteLossHook'), dict(type='WorkDirLockHook'),
                dict(type='KNNMonitorHook', data_root=None, interval=20, max_bank_per_class=10,
                     max_queries_per_class=10)]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
visualizer = dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')])
log_processor = dict(window_size=10, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = True  # continue from the newest checkpoint in the work dir, if any
randomness = dict(seed=0, diff_rank_seed=True)
