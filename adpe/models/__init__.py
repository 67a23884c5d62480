"""The method: pure torch + timm. ViT blocks (``vit``), the MAE / MAE+ / AdPE pretraining model (``mae``) and its
adversary (``adversary``), position tables (``pos_embed``), iRPE (``rpe``), learned relative biases (``rel_bias``)
and the transfer backbone (``backbone``). Models import no other part of ``adpe`` than the leaf
``adpe.structure``."""
