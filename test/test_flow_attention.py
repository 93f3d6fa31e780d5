"""Nyström self-attention of the DenseFlow coupling network (training/flow/attention.py): any spatial
size, correct NCHW -> token layout, exact when the landmarks are all tokens."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densehybrid_training.flow import CouplingNetwork, NystromAttention
from densehybrid_training.flow.attention import iterative_pinv

DT = torch.float64


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def naive_attention(module: NystromAttention, x: torch.Tensor) -> np.ndarray:
    """Independent reference in numpy: per-pixel linear maps, token n = h * W + w, full softmax."""
    x = x.detach().numpy()
    b, c, h, w = x.shape
    wqkv = module.qkv.weight.detach().numpy()[:, :, 0, 0]
    bqkv = module.qkv.bias.detach().numpy()
    wo = module.out.weight.detach().numpy()[:, :, 0, 0]
    bo = module.out.bias.detach().numpy()
    e, heads = module.embed_dim, module.heads
    d = e // heads
    out = np.zeros((b, c, h, w))
    for i in range(b):
        tokens = x[i].reshape(c, h * w).T  # (N, C): row n is pixel (n // W, n % W)
        qkv = tokens @ wqkv.T + bqkv  # (N, 3E)
        q, k, v = qkv[:, :e], qkv[:, e:2 * e], qkv[:, 2 * e:]
        heads_out = []
        for j in range(heads):
            sl = slice(j * d, (j + 1) * d)
            logits = q[:, sl] @ k[:, sl].T / math.sqrt(d)
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            heads_out.append(p @ v[:, sl])
        y = np.concatenate(heads_out, axis=1) @ wo.T + bo  # (N, C)
        out[i] = y.T.reshape(c, h, w)
    return out


@pytest.mark.parametrize("size", [(8, 24), (1, 3), (5, 7), (3, 1), (6, 6)])
@pytest.mark.parametrize("heads", [1, 2])
def test_exact_when_landmarks_cover_all_tokens(size, heads):
    torch.manual_seed(0)
    h, w = size
    x = torch.randn(2, 6, h, w, dtype=DT)
    nystrom = NystromAttention(6, 8, heads, landmarks=(h, w), pinv="exact", direct_when_exact=False).to(DT)
    direct = NystromAttention(6, 8, heads, landmarks=(h + 3, w + 1)).to(DT)  # grid clamped to (h, w)
    direct.load_state_dict(nystrom.state_dict())
    reference = naive_attention(nystrom, x)
    # S pinv(S) S = S; the residual is pinv round-off, amplified by the conditioning of S (N up to 192)
    assert np.abs(nystrom(x).detach().numpy() - reference).max() < 1e-5
    assert np.abs(direct(x).detach().numpy() - reference).max() < 1e-12


@pytest.mark.parametrize("size", [(8, 24), (1, 3), (5, 7), (2, 9), (16, 16), (7, 13)])
def test_any_spatial_size(size):
    """Fewer landmarks than tokens (4x4 grid clamped per axis), H*W % 4 != 0 included."""
    torch.manual_seed(1)
    attention = NystromAttention(8, 4, landmarks=(4, 4))
    x = torch.randn(3, 8, *size)
    y = attention(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert attention.qkv.weight.grad.abs().sum() > 0


def test_nystrom_is_per_sample_and_position_consistent():
    """Batch elements do not interact, and the NCHW layout is respected: an image made of one column
    repeated across the width gives the same output in every column (a reshape without permute
    would mix channels and positions and break this)."""
    torch.manual_seed(2)
    attention = NystromAttention(6, 4, landmarks=(2, 2)).to(DT)
    column = torch.randn(2, 6, 5, 1, dtype=DT)
    x = column.expand(2, 6, 5, 8).contiguous()
    y = attention(x)
    assert torch.allclose(y, y[..., :1].expand_as(y), atol=1e-12)
    assert torch.allclose(attention(x[1:]), y[1:], atol=1e-12)


def test_nystrom_approximates_full_attention_better_with_more_landmarks():
    torch.manual_seed(3)
    full = NystromAttention(8, 4, landmarks=(12, 12)).to(DT)
    x = torch.randn(2, 8, 12, 12, dtype=DT)
    reference = naive_attention(full, x)
    errors = []
    for grid in [(2, 2), (6, 6), (12, 12)]:
        approx = NystromAttention(8, 4, landmarks=grid, pinv="exact", direct_when_exact=False).to(DT)
        approx.load_state_dict(full.state_dict())
        errors.append(np.abs(approx(x).detach().numpy() - reference).max())
    assert errors[2] < 1e-6 and errors[0] > errors[2]


def test_iterative_pinv_converges_to_moore_penrose():
    torch.manual_seed(4)
    a = torch.softmax(torch.randn(3, 16, 16, dtype=DT) * 2, dim=-1)
    exact = torch.linalg.pinv(a)
    assert (iterative_pinv(a, 25) - exact).abs().max() < 1e-8
    z = iterative_pinv(a, 25)
    assert torch.allclose(a @ z @ a, a, atol=1e-10)  # Moore-Penrose identity


def test_coupling_network_shapes_and_zero_init():
    net = CouplingNetwork(5, 10, width=8, dense_layers=3, dense_growth=4, landmarks=(2, 2))
    x = torch.randn(2, 5, 8, 24)
    y = net(x)
    assert y.shape == (2, 10, 8, 24) and not y.any()  # zero-initialised output conv
    n_dense = sum(1 for m in net.dense.layers)
    assert n_dense == 3
