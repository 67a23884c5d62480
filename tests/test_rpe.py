import math

import pytest
import torch
import torch.nn.functional as F

from adpe.models.rpe import (
    ALPHA,
    BETA,
    GAMMA,
    NUM_BUCKETS,
    Lookup,
    contextual_rpe,
    continuous_grid_lookups,
    discrete_index,
    discrete_lookup,
    grid_lookup,
    grid_offsets,
)


def reference_index(x: int) -> int:
    """The piecewise index of docs/method.md, one integer at a time."""
    a = abs(x)
    m = a if a <= ALPHA else ALPHA + math.log(a / ALPHA) / math.log(GAMMA / ALPHA) * (BETA - ALPHA)
    return int(math.copysign(min(round(m), int(BETA)), x)) if x else 0


def reference_bucket(h: int, w: int, i: int, j: int) -> int:
    if i == 0 or j == 0:
        return 49
    (ri, ci), (rj, cj) = divmod(i - 1, w), divmod(j - 1, w)
    return (3 + reference_index(ri - rj)) * 7 + (3 + reference_index(ci - cj))


@pytest.mark.parametrize("side", [7, 14])
def test_discrete_buckets_equal_piecewise_formula(side):
    ids = discrete_lookup(side, side).ids[0, ..., 0]
    n = side * side + 1
    expected = torch.tensor([[reference_bucket(side, side, i, j) for j in range(n)] for i in range(n)])
    assert torch.equal(ids, expected)
    assert ids.max() == NUM_BUCKETS - 1 == 49 and ids.min() == 0


def test_index_values_saturate_at_three():
    offsets = torch.tensor([0, 1, 2, 3, 4, 8, 13, -13])
    assert discrete_index(offsets).tolist() == [0, 1, 2, 2, 3, 3, 3, -3]
    assert [reference_index(x) for x in offsets.tolist()] == [0, 1, 2, 2, 3, 3, 3, -3]


def grid_sample_reference(table: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The definition of the continuous lookup in docs/method.md, via grid_sample. offsets (n, n, 2) -> (n, n, C)."""
    a = offsets.abs()
    m = torch.where(a <= ALPHA, a, ALPHA + torch.log(a.clamp(min=ALPHA) / ALPHA) / math.log(GAMMA / ALPHA)
                    * (BETA - ALPHA))
    v = (torch.sign(offsets) * m).clamp(max=BETA).clamp(-BETA, BETA) / BETA
    grid = v[None]  # (1, n, n, 2): x = row value, y = col value
    img = table[:, :49].reshape(1, -1, 7, 7)
    return F.grid_sample(img, grid, mode="bilinear", align_corners=False, padding_mode="zeros")[0].permute(1, 2, 0)


def mixed_table(table: torch.Tensor, lookup, sample: int = 0) -> torch.Tensor:
    """The 7 x 7 table as a bilinear lookup mixes it for every (query cell, key cell): (L, L, C)."""
    grid = table[:, :49].reshape(-1, 7, 7)  # (C, a, b): bucket a * 7 + b
    col_w, row_w = lookup.col_weights[sample], lookup.row_weights[sample]  # (L, w, 7), (L, h, 7)
    weights = torch.einsum("ica,irb->ircab", col_w, row_w)  # (L, h, w, 7, 7): bucket weights of each pair
    return torch.einsum("ircab,zab->ircz", weights, grid).reshape(col_w.shape[0], -1, grid.shape[0])


def test_continuous_lookup_equals_grid_sample_definition():
    torch.manual_seed(0)
    table = torch.randn(5, 50, dtype=torch.float64)
    shift = torch.rand(1, 2, dtype=torch.float64) * 3 - 1.5
    lookup = continuous_grid_lookups(5, 6, shift, cls_token=False)[0]
    offsets = grid_offsets(5, 6).double() + shift
    torch.testing.assert_close(mixed_table(table, lookup), grid_sample_reference(table, offsets))


def test_shifted_queries_read_their_own_offsets_and_the_rest_the_grid():
    """RPE coordinate mode: per sample, flagged queries' offsets move by the shift, per grid_sample's definition;
    the cls row and column read bucket 49."""
    torch.manual_seed(0)
    h, w, batch = 4, 5, 3
    table = torch.randn(1, 6, 50, dtype=torch.float64)
    q = torch.randn(batch, 2, 1 + h * w, 6, dtype=torch.float64)
    shift = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    flagged = torch.rand(batch, h * w) > 0.5
    out = contextual_rpe(q, table, continuous_grid_lookups(h, w, shift, shifted_queries=flagged)[0])
    for b in range(batch):
        offsets = grid_offsets(h, w).double() + flagged[b, :, None, None] * shift
        mixed = grid_sample_reference(table[0], offsets)  # (L, L, head_dim)
        torch.testing.assert_close(out[b, :, 1:, 1:], torch.einsum("hid,ijd->hij", q[b, :, 1:], mixed))
        cls_logit = q[b] @ table[0, :, 49]  # (H, N)
        torch.testing.assert_close(out[b, :, 0], cls_logit[:, :1].expand(-1, 1 + h * w))
        torch.testing.assert_close(out[b, :, 1:, 0], cls_logit[:, 1:])


def test_continuous_agrees_with_discrete_where_defined_to():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 50, 8)
    table = torch.randn(1, 8, 50)
    dis = contextual_rpe(q, table, discrete_lookup(7, 7))
    con = contextual_rpe(q, table, grid_lookup(7, 7, "continuous"))
    cls_cells = torch.zeros(50, 50, dtype=torch.bool)
    cls_cells[0] = cls_cells[:, 0] = True
    diagonal = torch.eye(50, dtype=torch.bool)  # zero offset
    agree = cls_cells | diagonal
    torch.testing.assert_close(con[..., agree], dis[..., agree])
    assert not torch.allclose(con[..., ~agree], dis[..., ~agree]), "they differ elsewhere by definition"


def test_contextual_rpe_is_q_dot_bucket():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 5, 4)
    table = torch.randn(1, 4, 50)
    ids = torch.randint(0, 50, (1, 5, 5, 1))
    out = contextual_rpe(q, table, Lookup(ids))
    for i in range(5):
        for j in range(5):
            torch.testing.assert_close(out[0, :, i, j], q[0, :, i] @ table[0, :, ids[0, i, j, 0]])


def test_continuous_lookup_is_differentiable_in_the_shift():
    shifts = torch.full((2, 2), 0.3, requires_grad=True)
    table = torch.randn(1, 4, 50)
    flagged = torch.tensor([[True, False] * 4 + [True]])
    lookups = continuous_grid_lookups(3, 3, shifts, shifted_queries=flagged)
    out = sum(contextual_rpe(torch.randn(1, 1, 10, 4), table, lookup).sum() for lookup in lookups)
    out.backward()
    assert (shifts.grad.abs() > 0).all(), "every layer's shift, both components, gets a gradient"
