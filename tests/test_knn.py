"""The weighted kNN classifier (DINO's monitor) against a brute-force reference, its behaviour at the extremes,
and the probe backbone that carries a pretraining model's encoder weights."""

from __future__ import annotations

import math

import torch

from adpe.knn import knn_accuracy, knn_scores, probe_backbone
from adpe.models.mae import MaskedAutoencoder
from adpe.models.rpe import grid_lookup
from adpe.models.vit import RelPos


def brute_force_scores(bank, labels, queries, num_classes, k, temperature):
    """Per query, in plain loops: cosine to every bank feature, the k largest, exp(cos / T) summed per class."""
    scores = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    for q, query in enumerate(queries.double()):
        cosines = [float(query @ b.double() / (query.norm() * b.double().norm())) for b in bank]
        nearest = sorted(range(len(bank)), key=lambda i: -cosines[i])[:k]
        for i in nearest:
            scores[q, int(labels[i])] += math.exp(cosines[i] / temperature)
    return scores


def test_scores_equal_the_brute_force_reference():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(150, 16, generator=gen), torch.randn(40, 16, generator=gen)
    labels = torch.randint(0, 7, (150,), generator=gen)
    for k, temperature in ((20, 0.07), (1, 0.5), (500, 1.0)):  # k above the bank size: every feature votes
        got = knn_scores(bank, labels, queries, 7, k, temperature, chunk=16)
        want = brute_force_scores(bank, labels, queries, 7, min(k, 150), temperature)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)


def test_perfect_on_separable_features_and_chance_on_random_labels():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(10, 32, generator=gen) * 10
    bank_labels, query_labels = torch.arange(10).repeat(20), torch.arange(10).repeat(200)
    bank = centres[bank_labels] + torch.randn(200, 32, generator=gen)
    queries = centres[query_labels] + torch.randn(2000, 32, generator=gen)
    result = knn_accuracy(bank, bank_labels, queries, query_labels, 10)
    assert result == {"top1": 100.0, "top5": 100.0}
    shuffled = query_labels[torch.randperm(2000, generator=gen)]  # labels unrelated to the features
    top1 = knn_accuracy(bank, bank_labels, queries, shuffled, 10)["top1"]
    sigma = 100 * math.sqrt(0.1 * 0.9 / 2000)
    assert abs(top1 - 10.0) < 3 * sigma, top1
    assert "top5" not in knn_accuracy(bank[:8], bank_labels[:8] % 4, queries[:5], query_labels[:5] % 4, 4)


def test_probe_backbone_carries_the_encoder_with_clean_positions():
    """The backbone has the pretraining encoder's weights (iRPE tables included) and, on an unmasked input, gives
    the average of the encoder's patch tokens before the final norm, normalised without affine (a fresh
    fc_norm): the features a linear probe starts from."""
    torch.manual_seed(0)
    mae = MaskedAutoencoder("tiny", img_size=64, position="rpe", adversary="coordinate", rpe_lookup="continuous")
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.01 * torch.randn_like(p))  # off their initial values, adversary included
    backbone = probe_backbone(mae)
    assert (backbone.mode, backbone.pool, backbone.rel_pos, backbone.rpe_lookup) == ("cls", "avg", "irpe",
                                                                                      "continuous")
    torch.testing.assert_close(backbone.blocks[3].attn.rpe_k.lookup_table_weight,
                               mae.blocks[3].attn.rpe_k.lookup_table_weight)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = mae.patch_embed(x) + mae.pos_embed[:, 1:]
        tokens = torch.cat([(mae.cls_token + mae.pos_embed[:, :1]).expand(2, -1, -1), tokens], dim=1)
        clean = RelPos(grid_lookup(4, 4, "continuous", cls_token=True))  # no adversarial shift
        for block in mae.blocks:
            block.attn.rpe_query_scale = False  # the fine-tuning attention (docs/method.md)
            tokens = block(tokens, clean)
        pooled = torch.nn.functional.layer_norm(tokens[:, 1:].mean(dim=1), (192,), eps=1e-6)
        torch.testing.assert_close(backbone(x)[0], pooled, rtol=1e-4, atol=1e-5)
