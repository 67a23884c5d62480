"""Checkpoint sources and layouts: URLs fetched once into the cache, .safetensors, timm and mmpretrain state dicts.

Tests that build the backbone (AdPEViT through mmseg's registry, the loader of ``init_cfg``) or use mmengine are
marked ``mm``; the fetching and the refusals of the key table are tested on the core alone.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adpe.checkpoint import (
    CheckpointMismatchError,
    CheckpointSourceError,
    cached_checkpoint_path,
    export_backbone,
    fetch_checkpoint,
    load_checkpoint_file,
    to_backbone_state,
)
from adpe.models.backbone import block_outputs

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "tests" / "fixtures" / "official_adpe_rpe_tiny.pth"  # MAE+ iRPE, tiny (192-d, depth 4, 112²)
FIXTURE_PATCH = 16


# ------------------------------------------------------------------------------------------------ helpers
class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and records each GET's path on the server (``server.requests``)."""

    def do_GET(self):  # http.server's method name
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # quiet: the test reads server.requests instead
        pass


class LocalServer:
    """An http.server on 127.0.0.1 serving ``folder`` from a thread, until ``stop()``."""

    def __init__(self, folder: Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_CountingHandler, directory=folder))
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.running = False


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh checkpoint cache ($ADPE_CACHE/checkpoints); local URLs bypass any proxy."""
    monkeypatch.setenv("ADPE_CACHE", str(tmp_path / "adpe_cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return tmp_path / "adpe_cache" / "checkpoints"


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / RELEASE.name).write_bytes(RELEASE.read_bytes())
    served = LocalServer(folder)
    yield served
    served.stop()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def build_adpevit(**kw):
    """AdPEViT through mmseg's registry, as tests/test_ade20k_mm.py builds it."""
    pytest.importorskip("mmseg")
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import adpe.mm  # noqa: F401  (registers AdPEViT, mmengine's fetchers)

    init_default_scope("mmseg")
    backbone = MODELS.build({"type": "AdPEViT", "size": "tiny", "img_size": 112, "mode": "seg", "out_indices": (3,),
                             **kw})
    backbone.init_weights()
    return backbone.eval()


def pretrained(source) -> dict:
    return {"type": "Pretrained", "checkpoint": str(source)}


def convert(src: str, dst: Path, cache_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADPE_CACHE": str(cache_root), "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    return subprocess.run([sys.executable, "tools/convert_checkpoint.py", src, str(dst)], cwd=ROOT, env=env,
                          capture_output=True, text=True)


# ------------------------------------------------------------------------------------------------ URLs
@pytest.mark.mm
def test_url_checkpoint_loads_through_init_cfg_and_convert_then_from_the_cache(server, cache, tmp_path):
    url = server.url(RELEASE.name)
    local = build_adpevit(init_cfg=pretrained(RELEASE))
    remote = build_adpevit(init_cfg=pretrained(url))  # 'auto' settings resolved from the fetched file
    assert (remote.rel_pos, remote.rpe_lookup) == ("irpe", "discrete")
    assert_same_weights(remote, local)
    assert server.requests == [f"/{RELEASE.name}"], "__init__ ('auto') and init_weights share one download"
    assert files_in(cache) == [cached_checkpoint_path(url).name]

    cli_cache = tmp_path / "cli_cache"  # the command line fetches for itself, into its own cache
    done = convert(url, tmp_path / "first.pth", cli_cache)
    assert done.returncode == 0, done.stderr
    expected = export_backbone(RELEASE, tmp_path / "local.pth")
    first = torch.load(tmp_path / "first.pth", weights_only=True)
    assert first["meta"]["source"] == url
    assert first["state_dict"].keys() == expected["state_dict"].keys()
    assert all(torch.equal(first["state_dict"][k], v) for k, v in expected["state_dict"].items())
    assert len(server.requests) == 2

    server.stop()  # from here on, only the caches can answer
    again = build_adpevit(init_cfg=pretrained(url))
    assert_same_weights(again, local)
    done = convert(url, tmp_path / "second.pth", cli_cache)
    assert done.returncode == 0, done.stderr
    second = torch.load(tmp_path / "second.pth", weights_only=True)
    assert all(torch.equal(second["state_dict"][k], v) for k, v in first["state_dict"].items())


@pytest.mark.mm
@pytest.mark.parametrize("config", sorted((ROOT / "benchmarks").glob("*/*.py")), ids=lambda p: p.name)
def test_every_transfer_config_loads_init_cfg_from_a_url(config, server, cache, tmp_path):
    """Each config's own backbone settings (mode, windows, rel_pos, token grid), at the fixture's tiny size; an
    APE checkpoint (the fixture without its iRPE tables), which the MAE rows' rel_pos='bias' accepts too. 'auto'
    gives it a learned bias for dense transfer and no relative term for classification."""
    pytest.importorskip("mmseg")
    pytest.importorskip("mmdet")
    pytest.importorskip("mmpretrain")
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import adpe.mm  # noqa: F401

    ape = {k: v for k, v in load_checkpoint_file(RELEASE)["model"].items() if ".rpe_k." not in k}
    torch.save({"model": ape}, tmp_path / "served" / "ape_tiny.pth")
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.type == "AdPEViT" and backbone_cfg.init_cfg.type == "Pretrained"
    backbone_cfg.update(size="tiny", out_indices=(3,), init_cfg=pretrained(server.url("ape_tiny.pth")))
    patch = backbone_cfg.get("patch_size", FIXTURE_PATCH)
    if patch != FIXTURE_PATCH:  # the study's patch-8 rows: the fixture's patch over the same token grid
        backbone_cfg.update(patch_size=FIXTURE_PATCH, img_size=backbone_cfg.img_size * FIXTURE_PATCH // patch)
    backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    assert backbone.rel_pos == ("none" if backbone.mode == "cls" else "bias")
    for key in ("patch_embed.proj.weight", "blocks.3.attn.qkv.weight", "blocks.3.mlp.fc2.bias"):
        assert torch.equal(backbone.state_dict()[key], ape[key])


def _fetch_on_rank(rank: int, world: int, init_file: str, good: str, missing: str, results: str) -> None:
    """One rank of test_distributed_ranks_fetch_once: a failing fetch, then a good one; writes what it saw."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        try:
            fetch_checkpoint(missing)
            failed = "no error"
        except CheckpointSourceError as err:  # every rank, the leader's error re-raised after the barrier
            failed = "named" if missing in str(err) else str(err)
        path = fetch_checkpoint(good)
        Path(results, f"rank{rank}").write_text(f"{failed}\n{path}")
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_ranks_fetch_once_and_share_the_failure(server, cache, tmp_path):
    good, missing = server.url(RELEASE.name), server.url("missing.pth")
    results = tmp_path / "results"
    results.mkdir()
    torch.multiprocessing.spawn(_fetch_on_rank, args=(2, str(tmp_path / "pg_init"), good, missing, str(results)),
                                nprocs=2)
    seen = [(results / f"rank{r}").read_text().splitlines() for r in range(2)]
    assert seen == [["named", str(cached_checkpoint_path(good))]] * 2  # no rank left waiting at the barrier
    assert server.requests.count(f"/{RELEASE.name}") == 1, "only rank 0 downloads"
    assert files_in(cache) == [cached_checkpoint_path(good).name]


def test_unreachable_url_names_the_url_and_leaves_nothing_in_the_cache(cache):
    with socket.socket() as probe:  # a free port: nothing listens there once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/missing/epoch_400.pth"
    with pytest.raises(CheckpointSourceError, match=re.escape(url)):
        load_checkpoint_file(url)
    assert files_in(cache) == []


def test_url_without_a_fetcher_says_how_to_add_one(cache):
    with pytest.raises(CheckpointSourceError, match=r"no fetcher for gopher:// URLs .*register_fetcher"):
        load_checkpoint_file("gopher://example.org/epoch_400.pth")
    assert files_in(cache) == []


@pytest.mark.mm
def test_mmengine_backends_fetch_the_other_url_schemes(server, cache, tmp_path):
    pytest.importorskip("mmengine")
    from adpe.checkpoint import FETCHERS
    from adpe.mm.patches import fetch_with_mmengine

    assert FETCHERS["s3"] is fetch_with_mmengine and FETCHERS["petrel"] is fetch_with_mmengine
    fetch_with_mmengine(server.url(RELEASE.name), tmp_path / "copy.pth")  # mmengine's HTTP backend, same server
    assert (tmp_path / "copy.pth").read_bytes() == RELEASE.read_bytes()


# ------------------------------------------------------------------------------------------------ safetensors
@pytest.mark.mm
def test_safetensors_file_gives_the_same_backbone_as_the_pth(server, cache, tmp_path):
    flat = {k: v.contiguous() for k, v in load_checkpoint_file(RELEASE)["model"].items()}
    path = tmp_path / "served" / "adpe_rpe_tiny.safetensors"
    save_file(flat, path)
    assert load_checkpoint_file(path).keys() == flat.keys()
    reference = build_adpevit(init_cfg=pretrained(RELEASE))
    from_file = build_adpevit(init_cfg=pretrained(path))
    assert (from_file.rel_pos, from_file.rpe_lookup) == ("irpe", "discrete")  # 'auto' from the tables alone
    assert_same_weights(from_file, reference)
    from_url = build_adpevit(init_cfg=pretrained(server.url(path.name)))  # the cached copy keeps its suffix
    assert_same_weights(from_url, reference)


# ------------------------------------------------------------------------------------------------ layouts
@pytest.mark.mm
@pytest.mark.parametrize("global_pool, classifier_norm", [("token", "norm.weight"), ("avg", "fc_norm.weight")])
def test_timm_state_dict_loads_with_timm_block_outputs(global_pool, classifier_norm, tmp_path, timm_block_outputs,
                                                       random_timm_vit):
    reference = random_timm_vit(global_pool=global_pool)
    state = reference.state_dict()
    assert classifier_norm in state
    path = tmp_path / "timm_vit.safetensors"  # as timm's weights come from the Hugging Face hub
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    _, dropped = to_backbone_state(load_checkpoint_file(path))
    assert {k for k in dropped if not k.startswith("fc_norm.")} == {"head.weight", "head.bias"}
    backbone = build_adpevit(rel_pos="none", init_cfg=pretrained(path))
    x = torch.randn(2, 3, 112, 112)
    captured = timm_block_outputs(reference, x)
    with torch.no_grad():
        ours = block_outputs(backbone, x)
    assert len(ours) == len(captured) == 4
    for a, b in zip(ours, captured, strict=True):
        assert (a - b).abs().max() <= 1e-4


def test_timm_features_the_backbone_lacks_are_refused_by_name(random_timm_vit):
    with pytest.raises(CheckpointMismatchError, match=r"register tokens .*reg_token"):
        to_backbone_state(random_timm_vit(reg_tokens=2).state_dict())
    # layer scale is renamed to gamma_1 / gamma_2 and refused by a backbone without it (tests/test_recipes_mm.py)
    state, _ = to_backbone_state(random_timm_vit(init_values=1e-5).state_dict())
    assert "blocks.0.gamma_1" in state and not any(".ls1." in k for k in state)


# mmpretrain's MAE names, written from its modules (VisionTransformer / TransformerEncoderLayer / mmcv FFN /
# MAEPretrainDecoder), independently of adpe.checkpoint.RENAMED.
MAE_TO_MMPRETRAIN = (
    (r"^patch_embed\.proj\.", "backbone.patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm([12])\.", r"backbone.layers.\1.ln\2."),
    (r"^blocks\.(\d+)\.attn\.(qkv|proj)\.", r"backbone.layers.\1.attn.\2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"backbone.layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"backbone.layers.\1.ffn.layers.1."),
    (r"^norm\.", "backbone.ln1."),
    (r"^(cls_token|pos_embed)$", r"backbone.\1"),
)
MMPRETRAIN_NECK = {  # a 64-d, 1-block MAEPretrainDecoder (its norm is 'ln1', like the backbone's final norm)
    "neck.mask_token": (1, 1, 64), "neck.decoder_pos_embed": (1, 50, 64), "neck.decoder_embed.weight": (64, 192),
    "neck.decoder_blocks.0.ln1.weight": (64,), "neck.decoder_blocks.0.attn.qkv.weight": (192, 64),
    "neck.decoder_blocks.0.ffn.layers.0.0.weight": (256, 64), "neck.ln1.weight": (64,), "neck.ln1.bias": (64,),
    "neck.decoder_pred.weight": (768, 64),
}


def to_mmpretrain(mae_state: dict) -> dict:
    out = {}
    for key, value in mae_state.items():
        renamed = next((re.sub(p, r, key) for p, r in MAE_TO_MMPRETRAIN if re.match(p, key)), None)
        assert renamed is not None, f"no mmpretrain name for {key}"
        out[renamed] = value
    return out


@pytest.mark.mm
def test_mmpretrain_mae_layout_gives_the_mae_layout_block_outputs(tmp_path, random_timm_vit):
    encoder = {k: v for k, v in random_timm_vit().state_dict().items() if not k.startswith("head.")}
    torch.save({"model": {**encoder, "mask_token": torch.zeros(1, 1, 64)}}, tmp_path / "mae.pth")
    neck = {k: torch.randn(shape) for k, shape in MMPRETRAIN_NECK.items()}
    torch.save({"state_dict": {**to_mmpretrain(encoder), **neck}, "meta": {"epoch": 400}}, tmp_path / "mmpretrain.pth")

    state, dropped = to_backbone_state(load_checkpoint_file(tmp_path / "mmpretrain.pth"))
    assert state.keys() == encoder.keys()
    assert set(dropped) == set(neck) and set(dropped.values()) == {"pretraining decoder (mmpretrain's MAE neck)"}
    assert torch.equal(state["norm.weight"], encoder["norm.weight"])  # backbone.ln1, not the neck's ln1
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        theirs = block_outputs(build_adpevit(rel_pos="none", init_cfg=pretrained(tmp_path / "mmpretrain.pth")), x)
        ours = block_outputs(build_adpevit(rel_pos="none", init_cfg=pretrained(tmp_path / "mae.pth")), x)
    for a, b in zip(theirs, ours, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- verified downloads
class _CutHandler(http.server.BaseHTTPRequestHandler):
    """Answers with the full Content-Length of ``server.body`` but sends only its first half, then closes."""

    def do_GET(self):  # http.server's method name
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_cut_transfer_is_refused_and_never_cached(cache):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutHandler)
    httpd.body = RELEASE.read_bytes()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/cut/release.pth"
        with pytest.raises(CheckpointSourceError, match=rf"{re.escape(url)}.*received {len(httpd.body) // 2} of "
                                                        rf"{len(httpd.body)} bytes"):
            load_checkpoint_file(url)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert files_in(cache) == [], "nothing of a cut transfer stays in the cache"


def test_pages_and_text_from_a_url_are_refused_and_never_cached(server, cache, tmp_path):
    (tmp_path / "served" / "index.pth").write_text("<html><body>Sign in to download</body></html>")
    with pytest.raises(CheckpointSourceError, match="not a loadable checkpoint, so it was not cached: .*not a torch "):
        load_checkpoint_file(server.url("index.pth"))
    assert files_in(cache) == []


def test_sha256_in_the_url_or_file_name_is_checked(server, cache, tmp_path):
    import hashlib

    digest = hashlib.sha256(RELEASE.read_bytes()).hexdigest()
    named = tmp_path / "served" / f"adpe_rpe_tiny-{digest[:8]}.pth"  # torch.hub's / mmengine's publish_model names
    named.write_bytes(RELEASE.read_bytes())
    assert "model" in load_checkpoint_file(server.url(named.name))  # the hash in its name matches
    wrong = tmp_path / "served" / "adpe_rpe_tiny-0123abcd.pth"
    wrong.write_bytes(RELEASE.read_bytes())
    with pytest.raises(CheckpointSourceError, match=rf"sha256 is {digest}, but the URL names 0123abcd"):
        load_checkpoint_file(server.url(wrong.name))
    with pytest.raises(CheckpointSourceError, match="but the URL names deadbeef"):
        load_checkpoint_file(server.url(RELEASE.name) + "#sha256=deadbeef")
    assert "model" in load_checkpoint_file(server.url(RELEASE.name) + f"#sha256={digest}")
    assert len(files_in(cache)) == 2, "only the two verified downloads are cached"


def test_cached_and_written_files_get_the_umask_mode(server, cache, tmp_path):
    old = os.umask(0o022)
    try:
        load_checkpoint_file(server.url(RELEASE.name))
        export_backbone(RELEASE, tmp_path / "backbone.pth")
    finally:
        os.umask(old)
    assert [oct(p.stat().st_mode & 0o777) for p in cache.iterdir()] == ["0o644"]
    assert oct((tmp_path / "backbone.pth").stat().st_mode & 0o777) == "0o644"
