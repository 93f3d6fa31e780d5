"""DenseFlow bijections (training/flow): exact inverses and log-determinants against brute-force
autograd Jacobians, in float64; ActNorm's data-dependent initialisation."""
from __future__ import annotations

import math

import pytest
import torch

from densehybrid_training.flow import ActNorm, AffineCoupling, ChannelSwitch, CouplingNetwork, CrossUnitCoupling, \
    InvConv1x1, ScaleShift, Sigmoid, Squeeze, SqueezeDrop, flow_config, squeeze2d
from densehybrid_training.flow.dequantization import ConditionalAffineCoupling, VariationalDequantization
from densehybrid_training.flow.model import FlowModule

DT = torch.float64


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Replace zero-initialised convs (identity couplings) by random ones, give BN random statistics,
    switch to eval and float64, so that every bijection is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    module = module.to(DT)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=DT) * scale)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=DT) * scale)
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g, dtype=DT) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g, dtype=DT) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g, dtype=DT) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g, dtype=DT) * 0.1)
    return module.eval()


def brute_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """ln |det d fn(x) / dx| from the full autograd Jacobian (x: one sample)."""
    jac = torch.autograd.functional.jacobian(lambda t: fn(t.reshape(x.shape)).reshape(-1), x.reshape(-1),
                                             vectorize=True)
    assert jac.shape[0] == jac.shape[1], "map must be square"
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    return logabs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def small_net(c_in: int, c_out: int) -> CouplingNetwork:
    return CouplingNetwork(c_in, c_out, width=8, dense_layers=2, dense_growth=4, landmarks=(2, 2))


def make_actnorm():
    layer = ActNorm(4).to(DT)
    layer(torch.randn(8, 4, 4, 4, dtype=DT) * 3 + 1)  # data-dependent init
    with torch.no_grad():
        layer.bias.add_(0.1)
        layer.log_scale.add_(torch.linspace(-0.3, 0.3, 4, dtype=DT).reshape(1, 4, 1, 1))
    return layer, 4


def make_conv(lu: bool):
    def factory():
        torch.manual_seed(1)
        layer = InvConv1x1(4, lu=lu).to(DT)
        with torch.no_grad():  # leave the orthogonal init: |det| != 1
            for p in layer.parameters():
                p.add_(0.2 * torch.randn_like(p))
        return layer, 4
    return factory


def make_coupling(channels: int):
    def factory():
        torch.manual_seed(2)
        c1, c2 = channels - channels // 2, channels // 2
        return randomize(AffineCoupling(channels, small_net(c1, 2 * c2))), channels
    return factory


def make_flow_module():
    torch.manual_seed(3)
    module = FlowModule(6, flow_config("tiny")).to(DT)
    module(torch.randn(8, 6, 4, 4, dtype=DT))  # ActNorm init
    return randomize(module), 6


BIJECTIONS = {
    "actnorm": make_actnorm,
    "conv1x1": make_conv(False),
    "conv1x1_lu": make_conv(True),
    "coupling": make_coupling(4),
    "coupling_odd": make_coupling(5),
    "switch_odd": lambda: (ChannelSwitch(5), 5),
    "switch_even": lambda: (ChannelSwitch(4), 4),
    "squeeze": lambda: (Squeeze(), 4),
    "scale_shift": lambda: (ScaleShift(1 / 256, -0.5), 4),
    "sigmoid": lambda: (Sigmoid(), 4),
    "flow_module": make_flow_module,
}


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
def test_inverse_and_logdet_match_brute_force(name):
    layer, channels = BIJECTIONS[name]()
    torch.manual_seed(10)
    x = torch.randn(3, channels, 4, 4, dtype=DT)
    z, logdet = layer(x)
    assert z.shape[0] == 3 and logdet.shape == (3,)
    assert rel_err(layer.inverse(z), x) <= 1e-10
    for i in range(2):  # per-sample logdet
        expected = brute_logdet(lambda t: layer(t)[0], x[i:i + 1])
        assert logdet[i].item() == pytest.approx(expected.item(), abs=1e-8)


def test_switch_and_squeeze_are_the_stated_permutations():
    x = torch.arange(5 * 2 * 2, dtype=DT).reshape(1, 5, 2, 2)
    y, _ = ChannelSwitch(5)(x)
    assert torch.equal(y, torch.cat([x[:, 3:], x[:, :3]], 1))  # conditioning part is the first C - C//2
    s = squeeze2d(torch.arange(16.0).reshape(1, 1, 4, 4))
    assert s.shape == (1, 4, 2, 2)
    assert s[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left 2x2 cell
    assert s[0, :, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]


def test_lu_conv_logdet_is_sum_of_log_s_and_matches_slogdet():
    torch.manual_seed(0)
    layer = InvConv1x1(6, lu=True).to(DT)
    with torch.no_grad():
        layer.log_s.add_(0.5)
    w = layer.matrix()
    assert layer.log_abs_det().item() == pytest.approx(torch.linalg.slogdet(w)[1].item(), abs=1e-12)
    _, logdet = layer(torch.randn(2, 6, 3, 5, dtype=DT))
    assert logdet[0].item() == pytest.approx(15 * torch.linalg.slogdet(w)[1].item(), abs=1e-10)


def test_coupling_starts_as_identity():
    layer = AffineCoupling(6, small_net(3, 6)).eval()
    x = torch.randn(2, 6, 8, 8)
    z, logdet = layer(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(2))


def test_coupling_scale_is_bounded():
    layer = randomize(AffineCoupling(4, small_net(2, 4)), scale=50.0)
    x = torch.randn(2, 4, 4, 4, dtype=DT)
    z, logdet = layer(x)
    # |ln s| < 2 per transformed element: s = exp(2 tanh(raw / 2))
    assert logdet.abs().max().item() < 2 * 2 * 16


def test_cross_unit_coupling_affine_bijection():
    torch.manual_seed(4)
    cross = randomize(CrossUnitCoupling(context_channels=5, growth=3))
    context = torch.randn(2, 5, 4, 4, dtype=DT)
    z = torch.randn(2, 4, 4, 4, dtype=DT)
    e = torch.randn(2, 3, 4, 4, dtype=DT)
    z_aug, logdet = cross.affine(z, e, context)
    assert z_aug.shape == (2, 7, 4, 4) and torch.equal(z_aug[:, :4], z)
    z_back, e_back = cross.affine_inverse(z_aug, context)
    assert rel_err(torch.cat([z_back, e_back], 1), torch.cat([z, e], 1)) <= 1e-10
    assert torch.equal(cross.inverse(z_aug), z)  # sampling direction: drop the noise channels
    for i in range(2):
        expected = brute_logdet(lambda t: cross.affine(t[:, :4], t[:, 4:], context[i:i + 1])[0],
                                torch.cat([z, e], 1)[i:i + 1])
        assert logdet[i].item() == pytest.approx(expected.item(), abs=1e-8)
    # forward: the bound term is sum ln sigma - ln N(e) (3.21)
    z_aug2, term = cross(z, context, noise=e)
    log_n = torch.distributions.Normal(0.0, 1.0).log_prob(e).sum(dim=(1, 2, 3))
    assert torch.equal(z_aug2, z_aug)
    assert torch.allclose(term, logdet - log_n, atol=1e-12)


def test_cross_unit_coupling_starts_with_standard_noise():
    cross = CrossUnitCoupling(context_channels=4, growth=2)
    mean, log_sigma = cross.noise_params(torch.randn(1, 4, 3, 3))
    assert not mean.any() and not log_sigma.any()


def test_conditional_coupling_and_dequantization_flow():
    torch.manual_seed(5)
    coupling = randomize(ConditionalAffineCoupling(6, context_channels=3, width=8))
    context = torch.randn(2, 3, 2, 2, dtype=DT)
    x = torch.randn(2, 6, 2, 2, dtype=DT)
    z, logdet = coupling(x, context)
    assert rel_err(coupling.inverse(z, context), x) <= 1e-10
    expected = brute_logdet(lambda t: coupling(t, context[:1])[0], x[:1])
    assert logdet[0].item() == pytest.approx(expected.item(), abs=1e-8)

    deq = randomize(VariationalDequantization(in_channels=2, steps=2, width=8, context_channels=3), scale=0.3)
    levels = torch.randint(0, 256, (2, 2, 4, 4)).to(DT)
    ctx = deq.context(levels)
    eps = torch.randn(2, 8, 2, 2, dtype=DT)
    u, logdet = deq.transform(eps, ctx)
    assert u.shape == (2, 2, 4, 4) and 0 < u.min() and u.max() < 1
    assert rel_err(deq.transform_inverse(u, ctx), eps) <= 1e-8
    expected = brute_logdet(lambda t: deq.transform(t, ctx[:1])[0], eps[:1])
    assert logdet[0].item() == pytest.approx(expected.item(), abs=1e-7)


def test_squeeze_drop_inverse_and_standard_prior():
    drop = SqueezeDrop(3)
    x = torch.randn(2, 3, 4, 6, dtype=DT)
    kept, log_p, dropped = drop(x)
    assert kept.shape == (2, 6, 2, 3) and dropped.shape == (2, 6, 2, 3)
    assert torch.equal(drop.inverse(kept, dropped), x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(dropped).sum(dim=(1, 2, 3))
    assert torch.allclose(log_p, expected, atol=1e-12)
    # drawn at temperature 0 the dropped half is the prior mean (0)
    drawn = squeeze2d(drop.inverse(kept, None, temperature=0.0))
    assert not drawn[:, 6:].any()


def test_squeeze_drop_conditional_prior():
    drop = randomize(SqueezeDrop(2, prior="conditional"))
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    kept, log_p, dropped = drop(x)
    mean, log_std = drop.prior_net(kept).chunk(2, dim=1)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(dropped).sum(dim=(1, 2, 3))
    assert torch.allclose(log_p, expected, atol=1e-10)
    assert torch.equal(drop.inverse(kept, dropped), x)
    assert torch.allclose(squeeze2d(drop.inverse(kept, None, temperature=0.0))[:, 4:], mean)


def test_actnorm_data_dependent_init():
    torch.manual_seed(6)
    layer = ActNorm(5)
    x = torch.randn(7, 5, 6, 3) * torch.tensor([0.1, 1.0, 5.0, 20.0, 3.0]).reshape(1, 5, 1, 1) + 4.0
    z, _ = layer(x)
    assert bool(layer.initialized)
    mean = z.mean(dim=(0, 2, 3))
    var = z.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros(5), atol=1e-5)
    assert torch.allclose(var, torch.ones(5), atol=1e-4)
    # a second batch does not re-initialise
    before = [p.detach().clone() for p in layer.parameters()]
    layer(torch.randn(7, 5, 6, 3) * 100)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


def test_actnorm_state_dict_reload_does_not_reinitialise():
    torch.manual_seed(7)
    trained = ActNorm(3)
    trained(torch.randn(4, 3, 5, 5) * 2 + 1)
    with torch.no_grad():
        trained.bias.add_(0.5)  # "training" moved the parameters
    reloaded = ActNorm(3)
    reloaded.load_state_dict(trained.state_dict())
    other_batch = torch.randn(4, 3, 5, 5) * 9 - 3
    z_reloaded, ld_reloaded = reloaded(other_batch)
    z_trained, ld_trained = trained(other_batch)
    assert torch.equal(reloaded.bias, trained.bias) and torch.equal(reloaded.log_scale, trained.log_scale)
    assert torch.equal(z_reloaded, z_trained) and torch.equal(ld_reloaded, ld_trained)
    fresh = ActNorm(3)
    fresh(other_batch)  # without the state dict it would have initialised on this batch
    assert not torch.equal(fresh.bias, trained.bias)


def test_actnorm_logdet_formula():
    layer = ActNorm(2).to(DT)
    signs = torch.tensor([1.0, -1.0] * 10, dtype=DT).reshape(1, 1, 4, 5)
    layer(torch.cat([2.0 * signs + 1.0, 3.0 * signs - 7.0], dim=1))  # channel stds exactly 2 and 3
    _, logdet = layer(torch.zeros(1, 2, 4, 5, dtype=DT))
    assert logdet.item() == pytest.approx(-20 * (math.log(2.0) + math.log(3.0)), abs=1e-4)  # eps 1e-6
