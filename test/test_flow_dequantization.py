"""Variational dequantizer (training/flow/dequantization.py): parameter counts against the authors' code
(matejgrcic/DenseFlow, HEAD 2c36349: 2,395,784 = context network 157,552 + four conditional couplings and
five 1x1 convs 2,238,208 + learned base 24), invertibility, log-determinant against the autograd Jacobian,
ln q(u|x) against an independent change of variables, normalisation on the unit cube, and sampling from
the learned base."""
from __future__ import annotations

import math

import pytest
import torch

from densehybrid_training.flow import VariationalDequantization, parameter_breakdown, parameter_count
from densehybrid_training.flow.dequantization import ConditionalAffineCoupling

DT = torch.float64


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def conv_params(c_in: int, c_out: int, k: int = 1) -> int:
    """Weights and biases of a k x k convolution (hand count, independent of the code under test)."""
    return c_in * c_out * k * k + c_out


def dense_block_params(c_in: int, c_out: int, depth: int, growth: int) -> int:
    """Gated dense block: per layer 1x1 (c -> c) and 3x3 (c -> growth); gated 1x1 transition to 3 c_out."""
    layers = sum(conv_params(c_in + i * growth, c_in + i * growth) + conv_params(c_in + i * growth, growth, 3)
                 for i in range(depth))
    return layers + conv_params(c_in + depth * growth, 3 * c_out)


def small_dequantizer(seed: int = 0) -> VariationalDequantization:
    """A small dequantizer with every zero-initialised conv and the learned base made non-trivial."""
    torch.manual_seed(seed)
    deq = VariationalDequantization(in_channels=2, steps=2, width=8, context_channels=3, depth=2, growth=4,
                                    context_depth=2, context_growth=4).to(DT)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in deq.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=DT) * 0.3)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=DT) * 0.3)
        deq.base.loc.copy_(torch.randn(deq.base.loc.shape, generator=g, dtype=DT) * 0.5)
        deq.base.log_scale.copy_(torch.randn(deq.base.log_scale.shape, generator=g, dtype=DT) * 0.3)
    return deq.eval()


def brute_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """ln |det d fn(x) / dx| from the full autograd Jacobian (x: one sample)."""
    jac = torch.autograd.functional.jacobian(lambda t: fn(t.reshape(x.shape)).reshape(-1), x.reshape(-1),
                                             vectorize=True)
    assert jac.shape[0] == jac.shape[1]
    return torch.linalg.slogdet(jac)[1]


def test_parameter_counts_equal_the_authors_dequantizer():
    deq = VariationalDequantization()  # defaults = the authors' DequantizationFlow for 3 channels
    context = parameter_count(deq.context_net)
    flow = parameter_count(deq.couplings) + parameter_count(deq.convs)
    base = parameter_count(deq.base)
    assert (context, flow, base) == (157_552, 2_238_208, 24)
    assert parameter_count(deq) == 2_395_784
    # the same numbers from a hand count of the layers
    assert context == dense_block_params(3, 64, 4, 16) + conv_params(64, 64, 2) + dense_block_params(64, 64, 4, 16)
    coupling = conv_params(6 + 64, 64) + dense_block_params(64, 64, 4, 64) + conv_params(64, 12)
    assert parameter_count(deq.couplings[0]) == coupling
    assert flow == 4 * coupling + 5 * 12 * 12


def test_45_6_total_equals_the_authors():
    counts = parameter_breakdown("45-6", 64, 64)
    assert counts["total"] == 75_020_522
    assert counts["dequantizer"] == 2_395_784


def test_starts_as_identity_couplings_and_standard_base():
    deq = VariationalDequantization(in_channels=3, steps=2, width=8, context_channels=5, depth=1, growth=4,
                                    context_depth=1, context_growth=4).to(DT)
    x = torch.randint(0, 256, (2, 3, 6, 4)).to(DT)
    ctx = deq.context(x)
    assert ctx.shape == (2, 5, 3, 2)  # half resolution after the stride-2 2x2 conv
    h = torch.randn(2, 12, 3, 2, dtype=DT)
    out, logdet = deq.couplings[0](h, ctx)
    assert torch.equal(out, h) and not logdet.any()
    assert not deq.base.loc.any() and not deq.base.log_scale.any()


def test_coupling_inverse_and_logdet():
    torch.manual_seed(1)
    coupling = ConditionalAffineCoupling(6, context_channels=3, width=8, depth=2, growth=4).to(DT)
    with torch.no_grad():
        coupling.net[-1].weight.normal_(0, 0.3)
        coupling.net[-1].bias.normal_(0, 0.3)
    context = torch.randn(2, 3, 2, 2, dtype=DT)
    x = torch.randn(2, 6, 2, 2, dtype=DT)
    z, logdet = coupling(x, context)
    assert torch.allclose(coupling.inverse(z, context), x, atol=1e-10)
    assert logdet[0].item() == pytest.approx(brute_logdet(lambda t: coupling(t, context[:1])[0], x[:1]).item(),
                                             abs=1e-8)


def test_transform_inverse_logdet_and_log_q():
    deq = small_dequantizer()
    levels = torch.randint(0, 256, (2, 2, 4, 6), generator=torch.Generator().manual_seed(3)).to(DT)
    ctx = deq.context(levels)
    eps = torch.randn(2, 8, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        u, logdet = deq.transform(eps, ctx)
        assert u.shape == (2, 2, 4, 6) and 0 < u.min() and u.max() < 1
        assert torch.allclose(deq.transform_inverse(u, ctx), eps, atol=1e-9)
    expected = brute_logdet(lambda t: deq.transform(t, ctx[:1])[0], eps[:1])
    assert logdet[0].item() == pytest.approx(expected.item(), abs=1e-7)
    # ln q(u|x) = ln N(eps; loc, scale) - ln |det du/deps|, with torch.distributions for the base
    base = torch.distributions.Normal(deq.base.loc.detach(), deq.base.log_scale.detach().exp())
    with torch.no_grad():
        log_q = deq.log_q(u, levels)
    assert log_q[0].item() == pytest.approx((base.log_prob(eps[:1]).sum() - expected).item(), abs=1e-7)


def test_density_with_learned_base_is_normalised():
    """E_{u ~ U[0,1]^D}[q(u|x)] = 1 on the unit cube (D = 4), with a non-zero learned base."""
    torch.manual_seed(2)
    deq = VariationalDequantization(in_channels=1, steps=2, width=8, context_channels=3, depth=2, growth=4,
                                    context_depth=2, context_growth=4).to(DT)
    with torch.no_grad():
        for c in deq.couplings:
            c.net[-1].weight.normal_(0, 0.3)
            c.net[-1].bias.normal_(0, 0.3)
        deq.base.loc.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=DT).reshape(1, 4, 1, 1))
        deq.base.log_scale.copy_(torch.tensor([-0.2, 0.1, 0.0, -0.1], dtype=DT).reshape(1, 4, 1, 1))
    deq.eval()
    x = torch.tensor([[[[3.0, 200.0], [17.0, 255.0]]]], dtype=DT)
    n = 40000
    u = torch.rand(n, 1, 2, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q = torch.exp(deq.log_q(u, x.expand(n, 1, 2, 2)))
        y, log_q = deq(x.expand(8, 1, 2, 2), generator=torch.Generator().manual_seed(2))
        assert torch.allclose(log_q, deq.log_q(y - x, x.expand(8, 1, 2, 2)), atol=1e-8)
    mean, sem = q.mean().item(), q.std().item() / math.sqrt(n)
    assert abs(mean - 1.0) < 4 * sem and sem < 0.02
    assert ((y - x) > 0).all() and ((y - x) < 1).all()


def test_forward_draws_eps_from_the_learned_base():
    deq = small_dequantizer(5)
    n = 4000
    x = torch.full((n, 2, 2, 2), 128.0, dtype=DT)
    with torch.no_grad():
        y, _ = deq(x, generator=torch.Generator().manual_seed(6))
        eps = deq.transform_inverse(y - x, deq.context(x))
    mean = eps.mean(dim=(0, 2, 3))
    std = eps.std(dim=(0, 2, 3))
    loc, scale = deq.base.loc.flatten(), deq.base.log_scale.exp().flatten()
    sem = scale / math.sqrt(4 * n)
    assert (abs(mean - loc) < 5 * sem).all()
    assert torch.allclose(std, scale, rtol=0.05)


def test_gradients_reach_context_base_and_couplings():
    deq = small_dequantizer(7).train()
    x = torch.randint(0, 256, (3, 2, 4, 4), generator=torch.Generator().manual_seed(8)).to(DT)
    y, log_q = deq(x, generator=torch.Generator().manual_seed(9))
    (log_q.sum() + y.sum()).backward()
    for name in ("context_net.0.0.body.0.weight", "context_net.1.weight", "base.loc", "base.log_scale",
                 "couplings.0.net.0.weight", "couplings.1.net.2.weight", "convs.0.weight"):
        grad = dict(deq.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_odd_size_is_rejected():
    deq = small_dequantizer()
    with pytest.raises(ValueError, match="even height and width"):
        deq(torch.zeros(1, 2, 3, 4, dtype=DT))
