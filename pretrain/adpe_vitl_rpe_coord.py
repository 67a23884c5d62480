_base_ = ['./adpe_vitb_rpe_coord.py']
# ViT-L/16 (paper, 1600 epochs: 86.3 ImageNet top-1); same recipe, decoder 512-d x 8.
model = dict(size='large')
