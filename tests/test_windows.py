import pytest
import torch

from adpe.models.rel_bias import DecomposedRelPos
from adpe.models.vit import Block, window_partition, window_unpartition


@pytest.mark.parametrize("grid,window", [((14, 14), 7), ((13, 9), 4), ((5, 5), 14)])
def test_window_partition_inverse_is_exact(grid, window):
    x = torch.randn(2, *grid, 8)
    windows, padded = window_partition(x, window)
    assert padded == (-(-grid[0] // window) * window, -(-grid[1] // window) * window)
    assert windows.shape == (2 * (padded[0] // window) * (padded[1] // window), window * window, 8)
    assert torch.equal(window_unpartition(windows, window, padded, grid), x)


def test_window_contents_are_contiguous_patches():
    x = torch.arange(6 * 6, dtype=torch.float32).reshape(1, 6, 6, 1)
    windows, _ = window_partition(x, 3)
    assert windows[1, :, 0].tolist() == [3, 4, 5, 9, 10, 11, 15, 16, 17]  # top-right window


@pytest.mark.parametrize("with_bias", [False, True])
def test_window_equal_to_grid_is_global_attention(with_bias):
    torch.manual_seed(0)
    grid = (6, 6)
    bias = DecomposedRelPos(grid, 16) if with_bias else None
    windowed = Block(32, 2, rel_bias=bias, window_size=6).eval()
    global_ = Block(32, 2, rel_bias=bias, window_size=0).eval()
    global_.load_state_dict(windowed.state_dict())
    if with_bias:
        with torch.no_grad():
            bias.rel_pos_h.normal_()
            bias.rel_pos_w.normal_()
    x = torch.randn(2, 36, 32)
    torch.testing.assert_close(windowed(x, None, grid), global_(x, None, grid))


def test_padded_windows_differ_from_global_but_keep_shape():
    torch.manual_seed(0)
    block = Block(32, 2, window_size=4).eval()
    global_ = Block(32, 2, window_size=0).eval()
    global_.load_state_dict(block.state_dict())
    x = torch.randn(1, 7 * 5, 32)
    out = block(x, None, (7, 5))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, global_(x, None, (7, 5)), atol=1e-3)


def test_decomposed_bias_matches_its_definition():
    torch.manual_seed(0)
    bias = DecomposedRelPos((3, 4), 8)
    with torch.no_grad():
        bias.rel_pos_h.normal_()
        bias.rel_pos_w.normal_()
    q = torch.randn(1, 2, 12, 8)
    out = bias(q, (3, 4))
    for i in range(12):
        for j in range(12):
            (hi, wi), (hj, wj) = divmod(i, 4), divmod(j, 4)
            expected = q[0, :, i] @ bias.rel_pos_h[hi - hj + 2] + q[0, :, i] @ bias.rel_pos_w[wi - wj + 3]
            torch.testing.assert_close(out[0, :, i, j], expected)
