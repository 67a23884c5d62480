import pytest
import torch

from adpe.models.adversary import PositionAdversary, project_
from adpe.models.mae import MaskedAutoencoder
from adpe.optim import pretrain_param_groups

VARIANTS = {
    "ape_embedding": (dict(), dict(adversary="embedding")),
    "ape_coordinate": (dict(), dict(adversary="coordinate")),
    "rpe_embedding": (dict(position="rpe"), dict(position="rpe", adversary="embedding")),
    "rpe_coordinate": (
        dict(position="rpe", rpe_lookup="continuous"),
        dict(position="rpe", rpe_lookup="continuous", adversary="coordinate"),
    ),
}


def randomise_rpe_tables(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rpe_k" in name:
                p.normal_(std=0.5)


def baseline_and_adversarial(name):
    """A baseline and its adversarial sibling with identical network weights; delta = 0."""
    base_kw, adv_kw = VARIANTS[name]
    torch.manual_seed(0)
    base = MaskedAutoencoder("tiny", **base_kw)
    randomise_rpe_tables(base)
    adv = MaskedAutoencoder("tiny", **adv_kw)
    missing, unexpected = adv.load_state_dict(base.state_dict(), strict=False)
    assert all(k.startswith("adversary.") for k in missing)
    if name == "ape_embedding":  # delta takes the mask token's place: delta = 0 is a zero mask token
        assert unexpected == ["mask_token"]
        with torch.no_grad():
            base.mask_token.zero_()
            adv.adversary.position.zero_()
    else:
        assert unexpected == []
    return base, adv


def fixed_batch():
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(4, 3, 112, 112, generator=g)
    mask, _, _ = MaskedAutoencoder("tiny").random_masking(4, generator=g)
    return imgs, mask


@pytest.mark.parametrize("name", list(VARIANTS))
def test_zero_delta_computes_exactly_the_baseline_loss(name):
    base, adv = baseline_and_adversarial(name)
    imgs, mask = fixed_batch()
    torch.testing.assert_close(adv(imgs, mask=mask)["loss"], base(imgs, mask=mask)["loss"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["ape_embedding", "ape_coordinate", "rpe_coordinate"])
def test_every_parameter_and_every_delta_gets_gradient(name):
    _, adv = baseline_and_adversarial(name)
    imgs, mask = fixed_batch()
    adv(imgs, mask=mask)["loss"].backward()
    missing = [n for n, p in adv.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_rpe_embedding_delta_is_a_per_row_constant_and_cannot_change_attention():
    """Released-code semantics: delta is added to every bucket a masked query reads, so it shifts all logits
    of that row by the same q.delta -- softmax removes it. The loss is unchanged for any delta, and delta gets
    no gradient (up to rounding)."""
    _, adv = baseline_and_adversarial("rpe_embedding")
    imgs, mask = fixed_batch()
    before = adv(imgs, mask=mask)["loss"]
    with torch.no_grad():
        for d in adv.adversary.parameters():
            d.normal_(std=3.0)
    after = adv(imgs, mask=mask)["loss"]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    after.backward()
    assert max(d.grad.abs().max().item() for d in adv.adversary.parameters()) < 1e-6


@pytest.mark.parametrize("norm", ["l2", "linf", "none"])
@pytest.mark.parametrize("name", ["ape_embedding", "ape_coordinate", "rpe_coordinate"])
def test_ascent_step_raises_loss_and_stays_in_ball(name, norm):
    _, adv = baseline_and_adversarial(name)
    adv.adversary.norm, adv.adversary.radius = norm, 0.3
    imgs, mask = fixed_batch()
    # Start from a generic point: at delta = 0 the bilinear lookup sits on cell borders (a kink).
    torch.manual_seed(2)
    with torch.no_grad():
        for d in adv.adversary.parameters():
            d.normal_(std=0.05)
    groups = pretrain_param_groups(adv, lr=0.0, weight_decay=0.05, adv_lr=0.01)
    assert groups[-1]["maximize"] and groups[-1]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups)  # network groups have lr 0: frozen
    before = adv(imgs, mask=mask)["loss"]
    for _ in range(3):
        opt.zero_grad()
        adv(imgs, mask=mask)["loss"].backward()
        opt.step()
        stepped = [d.detach().clone() for d in adv.adversary.parameters()]
        adv.adversary.project_()
        if norm == "none":  # no ball: the step stands as it is
            assert all(torch.equal(d, s) for d, s in zip(adv.adversary.parameters(), stepped, strict=True))
        else:
            assert adv.adversary.max_norm() <= 0.3 + 1e-6
    with torch.no_grad():
        after = adv(imgs, mask=mask)["loss"]
    assert after > before


def test_projections():
    d = torch.tensor([3.0, 4.0])
    assert torch.allclose(project_(d.clone(), "l2", 1.0), torch.tensor([0.6, 0.8]))
    assert torch.equal(project_(torch.tensor([0.3, 0.4]), "l2", 1.0), torch.tensor([0.3, 0.4]))
    assert torch.equal(project_(d.clone(), "linf", 3.5), torch.tensor([3.0, 3.5]))
    assert torch.equal(project_(d.clone(), "none", 1.0), d)
    with pytest.raises(ValueError, match="norm"):
        project_(d, "l1", 1.0)


def test_adversary_shapes_per_mode():
    kw = dict(embed_dim=192, head_dims=(64, 32), depths=(4, 1))
    assert PositionAdversary("ape", "embedding", **kw).position.shape == (192,)
    assert PositionAdversary("ape", "coordinate", **kw).position.shape == (2,)
    rpe = PositionAdversary("rpe", "embedding", **kw)
    assert [tuple(p.shape) for p in rpe.encoder] == [(64,)] * 4 and [tuple(p.shape) for p in rpe.decoder] == [(32,)]
    coord = PositionAdversary("rpe", "coordinate", **kw)
    assert len(list(coord.parameters())) == 5 and all(p.shape == (2,) for p in coord.parameters())
    with pytest.raises(ValueError, match="radius"):
        PositionAdversary("ape", "embedding", radius=0, **kw)


def test_ape_embedding_delta_starts_like_the_mask_token_and_the_others_at_zero():
    torch.manual_seed(0)
    kw = dict(head_dims=(64, 32), depths=(4, 1))
    delta = PositionAdversary("ape", "embedding", embed_dim=20_000, **kw).position
    assert abs(delta.std().item() - 0.02) < 0.001 and abs(delta.mean().item()) < 0.001
    for position, mode in (("ape", "coordinate"), ("rpe", "embedding"), ("rpe", "coordinate")):
        adversary = PositionAdversary(position, mode, embed_dim=192, **kw)
        assert all(not p.any() for p in adversary.parameters()), (position, mode)


def test_param_groups_split():
    model = MaskedAutoencoder("tiny", adversary="coordinate")
    groups = pretrain_param_groups(model, lr=1e-3, weight_decay=0.05, adv_lr=2e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert "blocks.0.attn.qkv.weight" in decay and "blocks.0.attn.qkv.bias" in no_decay
    # Tokens are decayed, as in the release and MAE (every tensor of 2 or more dimensions).
    assert {"cls_token", "mask_token"} <= decay and "norm.weight" in no_decay
    assert "pos_embed" not in decay | no_decay
    assert [names[id(p)] for p in groups[2]["params"]] == ["adversary.position"]
    assert groups[2]["lr"] == 2e-3 and groups[2]["adv_norm"] == "l2"
