_base_ = ['./adpe_vitb_rpe_coord.py']
# ViT-H/14: 112^2 crops give an 8 x 8 grid of 14^2 patches.
model = dict(size='huge')
