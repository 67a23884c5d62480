"""Release AdPE pretraining checkpoints in our pretraining model: parity with the released model's outputs,
variant and size recovery, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from adpe.checkpoint import CheckpointMismatchError, load_checkpoint_file, load_pretrainer
from adpe.models.mae import MaskedAutoencoder

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASE_RPE = FIXTURES / "official_adpe_pretrain_mae_plus_rpe_tiny.pth"
EXPECTED = FIXTURES / "official_adpe_pretrain_expected_tiny.pt"
VARIANTS = FIXTURES / "official_adpe_pretrain_variants_expected_tiny.pt"


def release_checkpoint() -> dict:
    return load_checkpoint_file(RELEASE_RPE)


def save_release(tmp_path: Path, weights: dict, name: str = "release.pth", **args) -> Path:
    """A release-format checkpoint with the fixture's args, ``args`` replaced."""
    ckpt = release_checkpoint()
    path = tmp_path / name
    torch.save({"model": weights, "epoch": 399, "args": argparse.Namespace(**{**vars(ckpt["args"]), **args})}, path)
    return path


def test_release_rpe_checkpoint_builds_the_variant_it_describes():
    model = load_pretrainer(RELEASE_RPE)
    assert (model.variant, model.position, model.rpe_lookup, model.adversary) == ("mae_plus", "rpe", "discrete", None)
    assert model.grid == (7, 7) and model.norm_pix_loss and model.mask_ratio == 0.75
    attn, dec_attn = model.blocks[0].attn, model.decoder_blocks[0].attn
    assert (len(model.blocks), attn.num_heads, attn.head_dim) == (4, 3, 64)
    assert (len(model.decoder_blocks), dec_attn.num_heads, dec_attn.head_dim) == (1, 2, 32)
    for key, value in release_checkpoint()["model"].items():
        assert torch.equal(model.state_dict()[key], value), key


def test_release_pretraining_forward_and_gradients_match_the_released_model():
    """The fixture is the released pretraining model's loss, prediction and gradients for one mask. Its RPE
    attention scales the query before q.r as well: with the unscaled query the prediction differs by ~0.5."""
    expected = torch.load(EXPECTED, weights_only=True)
    case = expected["cases"]["mae_plus_rpe"]
    model = load_pretrainer(RELEASE_RPE)
    out = model(expected["x"], mask=case["mask"])
    assert abs(out["loss"].item() - case["loss"].item()) <= 1e-5
    assert (out["pred"] - case["pred"]).abs().max() <= 1e-4
    out["loss"].backward()
    params = dict(model.named_parameters())
    for name, grad in case["grads"].items():
        ours = params[name].grad
        assert (ours - grad).norm() <= 1e-3 * grad.norm(), name


@pytest.mark.parametrize("variant", ["mae_plus_ape", "ape_embedding", "ape_coordinate", "mae_plus_rpe",
                                     "rpe_embedding", "rpe_coordinate"])
def test_all_six_release_variants_reproduce_the_released_model(tmp_path, variant):
    """Release checkpoints of every variant (the fixture's weights with nonzero adversarial tensors) load into
    our pretraining model, which reproduces the released model's loss, prediction and the gradients of the
    tokens and of every adversarial parameter."""
    expected = torch.load(VARIANTS, weights_only=True)
    case = expected["cases"][variant]
    weights = dict(release_checkpoint()["model"])
    if case["args"]["pe_type"] == 0:
        weights = {k: v for k, v in weights.items() if "rpe_k" not in k}
    if variant == "ape_embedding":  # the adversarial token takes the mask token's place
        del weights["mask_token"]
    model = load_pretrainer(save_release(tmp_path, {**weights, **case["adv"]}, **case["args"]))
    out = model(expected["x"], mask=expected["mask"])
    assert abs(out["loss"].item() - case["loss"].item()) <= 1e-5
    assert (out["pred"] - case["pred"]).abs().max() <= 1e-4
    out["loss"].backward()
    ours = {"cls_token": model.cls_token.grad, "mask_token": getattr(model.mask_token, "grad", None)}
    ours |= {f"blocks.{i}.attn.rpe_k.adv_{kind}": d.grad for kind in ("token", "shift")
             for i, d in enumerate(getattr(model.adversary, "encoder", []))}
    ours |= {f"decoder_blocks.{i}.attn.rpe_k.adv_{kind}": d.grad for kind in ("token", "shift")
             for i, d in enumerate(getattr(model.adversary, "decoder", []))}
    if model.adversary is not None and model.position == "ape":
        ours["adv_token"] = model.adversary.position.grad
    for name, grad in case["grads"].items():
        # RPE-embedding deltas get only rounding noise (~1e-10) in both codes: absolute floor
        assert (ours[name].flatten() - grad.flatten()).norm() <= 1e-3 * grad.norm() + 1e-8, name


def test_pretrainer_scales_the_query_of_the_relative_term_and_the_backbone_need_not():
    """The pretraining encoder equals a transfer backbone built with rpe_query_scale=True (same weights, no
    mask), and differs from the default (unscaled, the release's fine-tuning ViT)."""
    from adpe.checkpoint import fit_to_backbone, to_backbone_state
    from adpe.models.backbone import ViTBackbone, block_outputs

    model = load_pretrainer(RELEASE_RPE).eval()
    x = torch.load(EXPECTED, weights_only=True)["x"]
    captured = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: captured.append(out)) for b in model.blocks]
    with torch.no_grad():
        model.forward_encoder(x, torch.zeros(2, 49))
    for hook in hooks:
        hook.remove()
    state, _ = to_backbone_state(release_checkpoint())
    for scaled, agrees in ((True, True), (False, False)):
        backbone = ViTBackbone("tiny", img_size=112, rel_pos="irpe", rpe_query_scale=scaled, out_indices=(3,))
        backbone.load_state_dict(fit_to_backbone(state, backbone)[0])
        with torch.no_grad():
            gap = max((a - b).abs().max().item() for a, b in zip(block_outputs(backbone.eval(), x), captured,
                                                                 strict=True))
        assert (gap <= 1e-4) is agrees, (scaled, gap)


def _release_adversarial_state(adv_type: int) -> dict:
    """The fixture's weights plus the adversarial tensors the release stores for ``adv_type`` (RPE)."""
    state = dict(release_checkpoint()["model"])
    for prefix, head_dim, depth in (("blocks", 64, 4), ("decoder_blocks", 32, 1)):
        for i in range(depth):
            if adv_type == 1:
                state[f"{prefix}.{i}.attn.rpe_k.adv_token"] = torch.randn(1, head_dim, 1)
            else:
                state[f"{prefix}.{i}.attn.rpe_k.adv_shift"] = torch.randn(2)
                state[f"{prefix}.{i}.attn.rpe_k.no_shift"] = torch.zeros(2)
    return state


@pytest.mark.parametrize("adv_type, mode, lookup", [(1, "embedding", "discrete"), (2, "coordinate", "continuous")])
def test_release_rpe_adversaries_map_onto_ours(tmp_path, adv_type, mode, lookup):
    torch.manual_seed(0)
    state = _release_adversarial_state(adv_type)
    path = save_release(tmp_path, state, adv_type=adv_type, norm=2, eps=0.5)
    model = load_pretrainer(path)
    assert (model.adversary.mode, model.rpe_lookup) == (mode, lookup)
    assert (model.adversary.norm, model.adversary.radius) == ("linf", 0.5)
    name = "adv_token" if adv_type == 1 else "adv_shift"
    assert torch.equal(model.adversary.encoder[3], state[f"blocks.3.attn.rpe_k.{name}"].flatten())
    assert torch.equal(model.adversary.decoder[0], state[f"decoder_blocks.0.attn.rpe_k.{name}"].flatten())


@pytest.mark.parametrize("adv_type, shape", [(1, (1, 1, 192)), (2, (2,))])
def test_release_ape_adversaries_map_onto_ours(tmp_path, adv_type, shape):
    state = {k: v for k, v in release_checkpoint()["model"].items() if "rpe_k" not in k}
    if adv_type == 1:  # the adversarial token takes the mask token's place
        del state["mask_token"]
    state["adv_token"] = torch.randn(shape)
    model = load_pretrainer(save_release(tmp_path, state, pe_type=0, adv_type=adv_type, norm=1))
    assert model.position == "ape" and model.adversary.mode == ("embedding" if adv_type == 1 else "coordinate")
    assert torch.equal(model.adversary.position, state["adv_token"].flatten())
    assert model.adversary.norm == "l2"


def test_heads_come_from_the_name_or_overrides_never_a_guess(tmp_path):
    state = {k: v for k, v in release_checkpoint()["model"].items() if "rpe_k" not in k}
    unknown = save_release(tmp_path, state, pe_type=0, model="my_vit")
    with pytest.raises(CheckpointMismatchError, match="num_heads=..., decoder_num_heads=..."):
        load_pretrainer(unknown)
    model = load_pretrainer(unknown, num_heads=6, decoder_num_heads=4)
    assert (model.blocks[0].attn.num_heads, model.decoder_blocks[0].attn.num_heads) == (6, 4)
    with pytest.raises(CheckpointMismatchError, match="should be 768-d but its tensors are 192-d"):
        load_pretrainer(save_release(tmp_path, state, "base.pth", pe_type=0, model="adpe_vit_base_patch16"))
    # RPE tables fix head_dim: a contradicting override is refused
    with pytest.raises(CheckpointMismatchError, match="head_dim 32.*head_dim 64: pass num_heads=3"):
        load_pretrainer(RELEASE_RPE, num_heads=6)


def test_bad_pretraining_checkpoints_fail_clearly(tmp_path):
    state = dict(release_checkpoint()["model"])
    no_tables = {k: v for k, v in state.items() if "rpe_k" not in k}
    with pytest.raises(CheckpointMismatchError, match=r"pe_type=1 \(RPE\) but its weights have no iRPE tables"):
        load_pretrainer(save_release(tmp_path, no_tables, "no_tables.pth"))
    wrong = {**state, "blocks.1.mlp.fc1.weight": torch.zeros(768, 191)}
    with pytest.raises(CheckpointMismatchError, match=r"shape: blocks\.1\.mlp\.fc1\.weight: checkpoint \(768, 191\)"):
        load_pretrainer(save_release(tmp_path, wrong, "wrong.pth"))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not load .*notes.pth"):
        load_pretrainer(text)
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointMismatchError, match="not a pretraining checkpoint"):
        load_pretrainer(tmp_path / "odd.pth")


def test_our_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny", position="rpe", rpe_lookup="continuous", adversary="coordinate",
                              adv_norm="none")
    cfg = ("model = dict(type='AdPEPretrainer', size='tiny', position='rpe', rpe_lookup='continuous', "
           "adversary='coordinate', adv_norm='none', data_preprocessor=None, compile=True)\n")
    torch.save({"meta": {"cfg": cfg}, "state_dict": {f"mae.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "epoch_1.pth")
    loaded = load_pretrainer(tmp_path / "epoch_1.pth")
    assert loaded.adversary.norm == "none" and loaded.rpe_lookup == "continuous"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
