_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, iRPE, embedding mode (released 400-epoch ViT-B: 84.3).
# Projection of delta: an L2 ball of radius 1 is this suite's choice. The release defaults to no projection
# (--norm 0, --eps 1) and leaves the values used to the paper's supplementary; adv_norm='linf' or 'none' and
# any adv_radius can be set here or with --cfg-options (docs/method.md, "Recipe decisions").
model = dict(position='rpe', rpe_lookup='discrete', adversary='embedding', adv_norm='l2', adv_radius=1.0)
