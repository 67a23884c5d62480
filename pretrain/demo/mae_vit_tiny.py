_base_ = ['./_base_demo.py']
# Tiny sibling of pretrain/mae_vitb.py (one 112^2 crop per image here, to stay small).
model = dict(variant='mae', img_size=112)
train_dataloader = dict(dataset=dict(num_crops=1, crop_size=112, scale=(0.2, 1.0)))
