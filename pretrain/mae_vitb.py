_base_ = ['./_base_/pretrain_runtime.py']
# Plain MAE baseline: encoder on the 25% visible patches, one 224^2 crop per image (scale 0.2-1), 400 epochs
# like the MAE+ / AdPE configs (MAE reports 1600 epochs: protocol imagenet_ft, adpe/report/published.json).
model = dict(variant='mae', img_size=224)
train_dataloader = dict(dataset=dict(num_crops=1, crop_size=224, scale=(0.2, 1.0)))
