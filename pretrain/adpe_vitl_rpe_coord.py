_base_ = ['./adpe_vitb_rpe_coord.py']
# ViT-L/16 (the paper reports it after 1600 epochs); same recipe, decoder 512-d x 8.
model = dict(size='large')
