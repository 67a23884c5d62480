_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, absolute positions, coordinate mode (released 400-epoch ViT-B: 84.2).
model = dict(adversary='coordinate', adv_norm='l2', adv_radius=1.0)
