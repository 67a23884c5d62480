import math

import torch

from adpe.models.pos_embed import grid_coords, sincos_1d, sincos_2d_at, sincos_2d_table


def closed_form_table(h: int, w: int, dim: int) -> torch.Tensor:
    """MAE's definition written out element by element: x (column) half first, then y (row)."""
    quarter = dim // 4
    table = torch.zeros(1 + h * w, dim, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            row = 1 + r * w + c
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                table[row, k] = math.sin(c * omega)
                table[row, quarter + k] = math.cos(c * omega)
                table[row, 2 * quarter + k] = math.sin(r * omega)
                table[row, 3 * quarter + k] = math.cos(r * omega)
    return table


def test_table_equals_closed_form_on_non_square_grid():
    table = sincos_2d_table(3, 5, 16)
    assert table.dtype == torch.float32 and table.shape == (16, 16)
    torch.testing.assert_close(table.double(), closed_form_table(3, 5, 16), atol=1e-7, rtol=0)
    assert torch.equal(table[0], torch.zeros(16)), "cls row must be zero"


def test_axis_order_column_first():
    table = sincos_2d_table(4, 4, 8, cls_token=False)
    # Moving along a row (column changes) alters only the first half of the channels.
    diff = table[1] - table[0]
    assert diff[:4].abs().sum() > 0 and diff[4:].abs().sum() == 0


def test_fractional_version_matches_table_at_integer_coordinates():
    table = sincos_2d_table(7, 7, 64, cls_token=False).double()
    frac = sincos_2d_at(grid_coords(7, 7), 64)
    torch.testing.assert_close(frac, table, atol=1e-7, rtol=0)


def test_fractional_coordinates_interpolate_smoothly_and_carry_gradient():
    delta = torch.tensor([0.5, -0.25], dtype=torch.float64, requires_grad=True)
    emb = sincos_2d_at(grid_coords(2, 2) + delta, 32)
    emb.sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    expected = sincos_1d(torch.tensor([0.5 + 0.0], dtype=torch.float64), 16)[0]
    torch.testing.assert_close(emb[0, 16:].detach(), expected)  # row half at row 0 + 0.5
