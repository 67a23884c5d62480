# UperNet + AdPE ViT-L/16: 24 blocks, features from blocks 7, 11, 15, 23, layer decay 0.65 over 24 layers.
_base_ = ['./upernet_adpe_vitb.py']
model = dict(
    backbone=dict(size='large', out_indices=(7, 11, 15, 23), drop_path_rate=0.2),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024),
)
