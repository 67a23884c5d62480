import pytest
import torch

from adpe.models.mae import MaskedAutoencoder, random_masking
from adpe.models.vit import SIZES


def test_masking_count_and_inverse_permutation():
    g = torch.Generator().manual_seed(0)
    mask, ids_restore, ids_keep = random_masking(6, 49, 0.75, generator=g)
    assert mask.shape == (6, 49)
    assert torch.equal(mask.sum(1), torch.full((6,), 49.0 - 12))  # int(49 * 0.25) = 12 kept
    ids_shuffle = ids_restore.argsort(1)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), torch.arange(49).expand(6, -1))
    assert torch.equal(ids_shuffle[:, :12], ids_keep)
    assert torch.all(mask.gather(1, ids_keep) == 0), "kept patches are exactly the visible ones"


def test_masking_rejects_ratio_that_keeps_nothing():
    with pytest.raises(ValueError, match="visible"):
        random_masking(1, 49, 0.999)


def test_patchify_roundtrip():
    model = MaskedAutoencoder("tiny", img_size=112)
    imgs = torch.randn(2, 3, 112, 112)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 49, 768)
    torch.testing.assert_close(patches[0, 8], imgs[0, :, 16:32, 16:32].permute(1, 2, 0).reshape(-1))
    assert torch.equal(model.unpatchify(patches), imgs)


def test_loss_ignores_visible_patches():
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny", norm_pix_loss=False)
    imgs = torch.randn(2, 3, 112, 112)
    mask, _, _ = model.random_masking(2)
    pred = torch.randn(2, 49, 768)
    base = model.forward_loss(imgs, pred, mask)
    spoiled = pred + 100.0 * (1 - mask)[..., None]  # change predictions of visible patches only
    assert torch.equal(model.forward_loss(imgs, spoiled, mask), base)
    manual = (((pred - model.patchify(imgs)) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(base, manual)


def test_norm_pix_target():
    model = MaskedAutoencoder("tiny")
    imgs = torch.rand(1, 3, 112, 112)
    target = model.patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    mask = torch.ones(1, 49)
    assert model.forward_loss(imgs, target, mask) < 1e-10


@pytest.mark.parametrize("kw", [dict(variant="mae", img_size=224), dict(), dict(position="rpe")])
def test_every_trainable_parameter_gets_gradient(kw):
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny", **kw)
    side = kw.get("img_size", 112)
    with torch.no_grad():  # non-zero iRPE tables, as after some training
        for name, p in model.named_parameters():
            if "rpe_k" in name:
                p.normal_(std=0.1)
    model(torch.randn(2, 3, side, side))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    assert not model.pos_embed.requires_grad and model.pos_embed.grad is None


def test_mae_encoder_sees_only_visible_patches():
    model = MaskedAutoencoder("tiny", variant="mae", img_size=112)
    mask, _, ids_keep = model.random_masking(2)
    latent = model.forward_encoder(torch.randn(2, 3, 112, 112), mask, ids_keep)
    assert latent.shape == (2, 1 + 12, 192)
    assert model.mask_token.shape == (1, 1, 64), "MAE's mask token lives in the decoder"


def test_mae_plus_masked_patch_content_does_not_leak():
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny").eval()
    imgs = torch.randn(1, 3, 112, 112)
    mask, _, _ = model.random_masking(1)
    out = model(imgs, mask=mask)
    changed = imgs.clone()
    masked_ids = mask[0].nonzero()[:, 0]
    for idx in masked_ids.tolist():
        r, c = divmod(idx, 7)
        changed[..., r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 5.0
    pred = model(changed, mask=mask)["pred"]
    torch.testing.assert_close(pred, out["pred"])


def test_wrong_input_size_is_reported():
    with pytest.raises(ValueError, match="built for"):
        MaskedAutoencoder("tiny")(torch.randn(1, 3, 224, 224))


def test_invalid_options_are_reported():
    with pytest.raises(ValueError, match="continuous"):
        MaskedAutoencoder("tiny", position="rpe", adversary="coordinate")
    with pytest.raises(ValueError, match="mae_plus"):
        MaskedAutoencoder("tiny", variant="mae", position="rpe")
    with pytest.raises(ValueError, match="size"):
        MaskedAutoencoder("giant")


def test_benchmarks_offer_every_model_size():
    from adpe.tooling.bench import cli

    assert cli.MODEL_SIZES == tuple(SIZES)
