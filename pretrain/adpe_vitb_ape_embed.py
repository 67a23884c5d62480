_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, absolute positions, embedding mode (released 400-epoch ViT-B: 84.1).
model = dict(adversary='embedding', adv_norm='l2', adv_radius=1.0)
