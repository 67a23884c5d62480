_base_ = ['./_base_/pretrain_runtime.py']
# MAE+ baseline with iRPE (released 400-epoch ViT-B: 84.2).
model = dict(position='rpe', rpe_lookup='discrete')
