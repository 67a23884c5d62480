_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, iRPE, embedding mode (released 400-epoch ViT-B: 84.3).
model = dict(position='rpe', rpe_lookup='discrete', adversary='embedding', adv_norm='l2', adv_radius=1.0)
