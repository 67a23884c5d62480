"""Weighted k-nearest-neighbour classification of features: DINO's monitor of representation quality.

A query's class scores are the sum, over its k most similar bank features (cosine similarity of l2-normalised
features), of ``exp(similarity / temperature)`` for each neighbour's class (Caron et al., 2021, "Emerging
Properties in Self-Supervised Vision Transformers", weighted k-NN with k = 20 and temperature 0.07).

* :func:`knn_scores`: (M, C) class scores of M queries against an N-feature bank.
* :func:`knn_accuracy`: top-1 (and top-5 when there are at least 5 classes) of those scores, in percent
  (:func:`score_accuracy` of the scores).
* :func:`probe_backbone`: the classification backbone (average pooling, as the linear probe uses) holding a
  pretraining model's current encoder weights, whose features the monitor classifies.

torch only; the mmengine hook around it is ``adpe.mm.hooks.KNNMonitorHook``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adpe.checkpoint import fit_to_backbone, to_backbone_state
from adpe.models.backbone import ViTBackbone

__all__ = ["knn_accuracy", "knn_scores", "probe_backbone", "score_accuracy"]


def knn_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Class scores (M, C) of ``queries`` (M, D) against ``bank`` (N, D) with labels (N,) in [0, C).

    Features are l2-normalised here; each query sums ``exp(cos / temperature)`` over its ``min(k, N)`` most similar
    bank features, per class. Queries go in chunks of ``chunk`` so the (chunk, N) similarity fits in memory.
    """
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} features but {bank_labels.shape[0]} labels")
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start:start + chunk] @ bank.T
        top, index = similarity.topk(k, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(similarity.shape[0], num_classes, device=bank.device)
        scores.append(votes.scatter_add_(1, bank_labels[index], weights))
    return torch.cat(scores) if scores else queries.new_zeros(0, num_classes)


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """{'top1': %, 'top5': % (only with at least 5 classes)} of the weighted kNN classifier on ``queries``."""
    return score_accuracy(knn_scores(bank, bank_labels, queries, num_classes, k, temperature), query_labels)


def score_accuracy(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """{'top1': %, 'top5': % (only with at least 5 classes)} of class scores (M, C) against labels (M,), the
    classes ranked by ``torch.topk`` (as mmpretrain's Accuracy ranks them, so per-image records agree)."""
    ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    result = {"top1": 100.0 * hits[:, 0].float().mean().item()}
    if scores.shape[1] >= 5:
        result["top5"] = 100.0 * hits.any(dim=1).float().mean().item()
    return result


def probe_backbone(mae) -> ViTBackbone:
    """A ``ViTBackbone`` in cls mode with average pooling (the linear probe's features: a fresh ``fc_norm`` of the
    mean patch token) holding ``mae``'s (an ``adpe.models.mae.MaskedAutoencoder``) current encoder weights, on its
    device, in eval mode. Positions are the clean ones: no mask, no adversary. Relative positions as a transfer backbone
    resolves 'auto' in cls mode: the iRPE tables of an RPE model, none for APE. Built on the CPU without touching
    the global random state (its initial weights are all replaced but fc_norm's ones and zeros), so a monitored
    run trains exactly as an unmonitored one."""
    dims = mae.dims
    with torch.random.fork_rng(devices=[]):
        backbone = ViTBackbone(size="base", img_size=(mae.grid[0] * mae.patch_size, mae.grid[1] * mae.patch_size),
                               in_chans=mae.in_chans, mode="cls", pool="avg", mlp_ratio=mae.mlp_ratio,
                               rel_pos="irpe" if mae.position == "rpe" else "none", rpe_lookup=mae.rpe_lookup,
                               **{f: getattr(dims, f) for f in ("patch_size", "embed_dim", "depth", "num_heads")})
    state, _ = to_backbone_state({"state_dict": mae.state_dict()})
    fitted, _ = fit_to_backbone(state, backbone)
    backbone.load_state_dict(fitted, strict=False)
    return backbone.to(mae.pos_embed.device).eval()
