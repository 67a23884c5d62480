_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, iRPE, coordinate mode (released 400-epoch ViT-B: 84.4; 1600 epochs: 84.4 in the paper's table).
model = dict(position='rpe', rpe_lookup='continuous', adversary='coordinate', adv_norm='l2', adv_radius=1.0)
