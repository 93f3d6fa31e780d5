"""DenseFlow model (training/flow/model.py): whole-flow inverse and log-determinant, the bound's terms
and sign conventions, IWBO, sampling at any size with temperature and gradients, configs, presets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densehybrid_ros.config import ConfigError, from_dict
from densehybrid_training.flow import PRESETS, CrossUnitCoupling, DenseFlowConfig, VariationalDequantization, \
    build_flow, parameter_breakdown, parameter_count
from densehybrid_training.flow.attention import NystromAttention

DT = torch.float64
NORMAL = torch.distributions.Normal(0.0, 1.0)


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def randomize(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised convs get random weights, BN random statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype) * scale)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype) * scale)
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g, dtype=m.running_mean.dtype) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g, dtype=m.running_var.dtype) + 0.5)
    return module.eval()


def images(n: int, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth-ish uint8 images (a random gradient plus noise), not just white noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 200
    ramp = torch.linspace(0, 40, w).reshape(1, 1, 1, w)
    noise = torch.rand(n, 3, h, w, generator=g) * 30
    return (base + ramp + noise).clamp(0, 255).to(torch.uint8)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = build_flow("tiny").to(DT)
    model.log_prob(images(32))  # ActNorm data-dependent init
    return randomize(model)


def test_presets_follow_the_thesis():
    big, small = PRESETS["74-10"], PRESETS["45-6"]
    assert big.blocks == ((6, 5), (4, 6), (1, 20)) and big.growth == 10 and big.coupling_width == 48
    assert small.blocks == ((5, 3), (3, 5), (1, 15)) and small.growth == 6 and small.coupling_width == 48
    assert big.name == "DenseFlow-74-10" and small.name == "DenseFlow-45-6"  # L counts glow-like modules
    assert big.dense_layers == 7 and big.attention_heads == 1 and big.dequantization == "variational"


def test_parameter_count_of_74_10_equals_the_authors():
    """130,647,294 parameters at 64x64x3 in the authors' code (matejgrcic/DenseFlow, HEAD 2c36349)."""
    counts = parameter_breakdown("74-10", 64, 64)
    assert counts["latent"] == (308, 8, 8)  # 12 -> 62 -> 124 -> 154 -> 308 channels
    assert counts["total"] == 130_647_294
    assert counts["dequantizer"] == 2_395_784
    parts = ("coupling_networks", "cross_unit_g", "actnorm_and_1x1", "dequantizer", "priors")
    assert sum(counts[p] for p in parts) == counts["total"]


def test_config_from_dict_and_validation():
    config = from_dict(DenseFlowConfig, {"blocks": [[2, 1], [1, 2]], "growth": 3, "dequantization": "uniform"})
    assert config.blocks == ((2, 1), (1, 2)) and config.num_modules == 4
    with pytest.raises(ConfigError, match="growht"):
        from_dict(DenseFlowConfig, {"growht": 3})
    with pytest.raises(ConfigError, match="dequantization"):
        from_dict(DenseFlowConfig, {"dequantization": "gaussian"})
    with pytest.raises(ConfigError, match="blocks"):
        from_dict(DenseFlowConfig, {"blocks": []})


def test_bad_inputs_are_named(tiny):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.log_prob(torch.zeros(1, 3, 12, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        tiny.log_prob(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny.log_prob(torch.full((1, 3, 8, 8), 3.0))
    with pytest.raises(ValueError, match="levels"):
        tiny.log_prob(torch.full((1, 3, 8, 8), 300, dtype=torch.int64))
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.sample(1, 20, 16)
    with pytest.raises(ValueError, match="temperature"):
        tiny.sample(1, 8, 8, temperature=-1.0)


def test_whole_flow_is_invertible_with_cross_unit_coupling(tiny):
    torch.manual_seed(1)
    v = torch.rand(2, 3, 16, 24, dtype=DT) - 0.5
    z, terms, dropped = tiny.encode(v, generator=torch.Generator().manual_seed(5))
    assert terms["augmentation"].abs().min() > 0  # noise was appended
    assert z.shape == (2, *tiny.latent_shape(16, 24))
    v_back = tiny.decode(z, dropped)
    assert ((v_back - v).abs().max() / v.abs().max()).item() <= 1e-10


def test_whole_flow_logdet_matches_brute_force_jacobian(tiny):
    """With the cross-unit noises as inputs, [v, e_1, e_2] -> [z, dropped_1, dropped_2] is a bijection
    whose log|det| is the flow's logdet plus sum ln sigma = augmentation + sum ln N(e) (3.19-3.21)."""
    torch.manual_seed(2)
    v = torch.rand(1, 3, 8, 8, dtype=DT) - 0.5
    noise_shapes = [(1, 2, 4, 4), (1, 2, 2, 2)]  # tiny: growth 2, blocks at 4x4 and 2x2 (one coupling each)
    noises = [torch.randn(s, dtype=DT) for s in noise_shapes]
    sizes = [v.numel()] + [e.numel() for e in noises]

    def split(flat):
        parts = torch.split(flat, sizes)
        return parts[0].reshape(v.shape), [[parts[1].reshape(noise_shapes[0])], [parts[2].reshape(noise_shapes[1])], []]

    def fn(flat):
        vv, nn_ = split(flat)
        z, _, dropped = tiny.encode(vv, noises=nn_)
        return torch.cat([z.reshape(-1)] + [d.reshape(-1) for d in dropped])

    flat = torch.cat([v.reshape(-1)] + [e.reshape(-1) for e in noises])
    jac = torch.autograd.functional.jacobian(fn, flat, vectorize=True)
    assert jac.shape[0] == jac.shape[1] == flat.numel()
    sign, brute = torch.linalg.slogdet(jac)
    assert sign != 0
    _, terms, dropped = tiny.encode(v, noises=split(flat)[1])
    log_n = sum(NORMAL.log_prob(e).sum() for e in noises)
    assert (terms["logdet"] + terms["augmentation"] + log_n).item() == pytest.approx(brute.item(), abs=1e-7)
    # the factored-out halves are scored under N(0, I) and the final latent under the learned prior
    expected = sum(NORMAL.log_prob(d).sum() for d in dropped)
    assert terms["log_p_dropped"].item() == pytest.approx(expected.item(), abs=1e-9)


def test_elbo_terms_and_bits_per_dim(tiny):
    x = images(3, 8, 16, seed=3)
    g = torch.Generator().manual_seed(9)
    terms = tiny.elbo_terms(x, generator=g)
    d = 3 * 8 * 16
    assert torch.allclose(terms["input_scaling"], torch.full((3,), -d * math.log(256.0), dtype=DT))
    assert not terms["dequantization"].any()  # uniform q(u|x): ln q = 0 (3.13)
    elbo = tiny.log_prob(x, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(elbo, sum(terms.values()), atol=1e-9)
    bpd = tiny.bits_per_dim(x, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(bpd, -elbo / (d * math.log(2.0)), atol=1e-12)
    # float input in [0, 1] holding level / 255 is the same image
    as_float = tiny.log_prob(x.to(torch.float32) / 255.0, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(as_float, elbo, atol=1e-9)


def test_augmentation_term_sign_gives_a_valid_bound():
    """After h_i, let the rest of the model be N(z_aug; 0, I). Then p(z) = N(z) exactly, and with
    q(e~) = N(mu, sigma^2) the one-sample bound has mean ln N(z) - KL(q || N(0, I)) (analytic), while
    the importance-weighted average recovers ln N(z)."""
    torch.manual_seed(3)
    cross = CrossUnitCoupling(context_channels=2, growth=2).to(DT)
    with torch.no_grad():
        cross.g[-1].bias.copy_(torch.tensor([0.5, -0.3, 0.4, -0.6], dtype=DT))  # mu = (.5, -.3), raw ln sigma
    n = 20000
    z = torch.randn(1, 3, 2, 2, dtype=DT).expand(n, 3, 2, 2)
    context = torch.randn(1, 2, 2, 2, dtype=DT).expand(n, 2, 2, 2)
    z_aug, term = cross(z, context, generator=torch.Generator().manual_seed(0))
    log_w = NORMAL.log_prob(z_aug).sum(dim=(1, 2, 3)) + term
    log_pz = NORMAL.log_prob(z[0]).sum().item()
    mu = np.repeat([0.5, -0.3], 4)
    log_sigma = np.repeat(2 * np.tanh(np.array([0.4, -0.6]) / 2), 4)
    kl = np.sum(-log_sigma + (np.exp(2 * log_sigma) + mu ** 2) / 2 - 0.5)
    mean, sem = log_w.mean().item(), log_w.std().item() / math.sqrt(n)
    assert abs(mean - (log_pz - kl)) < 5 * sem
    assert mean < log_pz  # a lower bound
    iw = (torch.logsumexp(log_w, 0) - math.log(n)).item()
    assert abs(iw - log_pz) < 0.05


def test_variational_dequantization_density_is_normalised():
    """q(u|x) is a density on the unit cube: E_{u ~ U[0,1]^D}[q(u|x)] = 1 (D = 4 here)."""
    torch.manual_seed(4)
    deq = randomize(VariationalDequantization(in_channels=1, steps=2, width=8, context_channels=3, depth=2, growth=4,
                                              context_depth=2, context_growth=4).to(DT), 0.3)
    x = torch.tensor([[[[3.0, 200.0], [17.0, 255.0]]]], dtype=DT)
    n = 40000
    u = torch.rand(n, 1, 2, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q = torch.exp(deq.log_q(u, x.expand(n, 1, 2, 2)))
        y, log_q = deq(x.expand(8, 1, 2, 2), generator=torch.Generator().manual_seed(2))
    mean, sem = q.mean().item(), q.std().item() / math.sqrt(n)
    assert abs(mean - 1.0) < 4 * sem and sem < 0.02
    frac = y - x
    assert (frac > 0).all() and (frac < 1).all()
    assert torch.allclose(log_q, deq.log_q(frac, x.expand(8, 1, 2, 2)), atol=1e-8)


def test_variational_flow_end_to_end():
    torch.manual_seed(5)
    model = build_flow("tiny", dequantization="variational", drop_prior="conditional", lu=True)
    x = images(4, 16, 8)
    elbo = model.log_prob(x)
    assert elbo.shape == (4,) and torch.isfinite(elbo).all()
    (-elbo.mean()).backward()
    assert model.dequantizer.couplings[0].net[-1].weight.grad.abs().sum() > 0  # q(u|x) is trained
    sample = model.eval().sample(2, 8, 16, temperature=0.8)
    assert sample.shape == (2, 3, 8, 16) and 0 <= sample.min() and sample.max() <= 1


def test_iwbo_is_logsumexp_of_the_log_weights(tiny):
    x = images(3, seed=4)
    with torch.no_grad():
        bound = tiny.iwbo(x, 5, generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        log_w = torch.stack([tiny.log_prob(x, generator=g) for _ in range(5)]).numpy()
    m = log_w.max(axis=0)
    expected = m + np.log(np.exp(log_w - m).sum(axis=0)) - math.log(5)
    assert np.allclose(bound.numpy(), expected, atol=1e-9)


def test_iwbo_tightens_with_k(tiny):
    """Independent draws: mean IWBO_1 (= ELBO) <= IWBO_4 <= IWBO_16 beyond Monte Carlo error."""
    x = images(4, seed=5)
    reps = 96
    g = torch.Generator().manual_seed(11)
    means, sems = [], []
    with torch.no_grad():
        elbo = tiny.log_prob(x.repeat(reps, 1, 1, 1), generator=g)
        for k in (1, 4, 16):
            b = tiny.iwbo(x.repeat(reps, 1, 1, 1), k, batch_samples=k, generator=g).reshape(reps, 4)
            means.append(b.mean().item())
            sems.append(b.std(dim=0).mean().item() / math.sqrt(reps * 4))
    assert abs(means[0] - elbo.mean().item()) < 4 * (sems[0] * math.sqrt(2))  # k = 1 is the ELBO
    for i in range(2):
        assert means[i + 1] - means[i] > 3 * math.hypot(sems[i], sems[i + 1])


@pytest.mark.parametrize("size", [(16, 16), (24, 40), (32, 64)])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampling_any_size_with_gradients(tiny, size, temperature):
    tiny.zero_grad()
    sample = tiny.sample(2, *size, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 3, *size) and sample.dtype == DT
    assert torch.isfinite(sample).all() and sample.min() >= 0 and sample.max() <= 1
    (sample * torch.linspace(-1, 1, size[1], dtype=DT)).mean().backward()
    assert tiny.prior.loc.grad.abs().sum() > 0 and tiny.prior.log_scale.grad.abs().sum() > 0
    for block in tiny.blocks:
        for unit in block.units:
            for module in unit.layers:
                actnorm, conv, coupling, _ = module.layers
                assert actnorm.log_scale.grad.abs().sum() > 0
                assert conv.weight.grad.abs().sum() > 0
                assert coupling.net.project.weight.grad.abs().sum() > 0
        for cross in block.cross:  # sampling drops the noise channels: g_i is not used (3.22-3.25)
            assert cross.g[0].weight.grad is None


def test_sampling_in_train_mode_backpropagates():
    torch.manual_seed(6)
    model = build_flow("tiny")
    model.log_prob(images(8, 16, 16))
    sample = model.sample(3, 16, 24)
    sample.mean().backward()
    assert model.prior.loc.grad.abs().sum() > 0


def test_temperature_zero_is_deterministic_and_temperature_scales_spread(tiny):
    with torch.no_grad():
        a = tiny.sample(2, 16, 16, temperature=0.0, generator=torch.Generator().manual_seed(0))
        b = tiny.sample(2, 16, 16, temperature=0.0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and torch.equal(a[0], a[1])
        spread = [tiny.sample(64, 8, 8, temperature=t, generator=torch.Generator().manual_seed(2)).std().item()
                  for t in (0.3, 1.0)]
    assert spread[0] < spread[1]


def test_model_state_dict_reload_does_not_reinitialise(tiny):
    sd = tiny.state_dict()
    torch.manual_seed(123)
    fresh = build_flow("tiny").to(DT)
    fresh.load_state_dict(sd)
    fresh.eval()
    x = images(4, 16, 8, seed=7) // 2  # a different batch: would re-initialise ActNorm if it could
    a = fresh.log_prob(x, generator=torch.Generator().manual_seed(0))
    b = tiny.log_prob(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-9)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())


def test_tiny_parameter_count_and_breakdown():
    model = build_flow("tiny")
    counts = parameter_breakdown("tiny", 16, 16)
    assert counts["total"] == parameter_count(model)
    assert counts["latent"] == (60, 2, 2)
    assert isinstance(model.blocks[0].units[0].layers[0].layers[2].net.attention, NystromAttention)


def test_maximum_likelihood_training_lowers_bits_per_dim():
    torch.manual_seed(7)
    model = build_flow("tiny")
    data = images(32, 8, 8, seed=1)
    model.log_prob(data)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = model.bits_per_dim(data, generator=g).mean().item()
    for _ in range(40):
        loss = model.bits_per_dim(data[torch.randint(0, 32, (16,), generator=g)], generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.bits_per_dim(data, generator=g).mean().item()
    assert after < before - 0.5, (before, after)


@pytest.mark.parametrize("preset, name, latent_channels",
                         [("cpu-m", "DenseFlow-22-6", 84), ("cpu-l", "DenseFlow-31-6", 120)])
def test_stronger_cpu_presets(preset, name, latent_channels):
    """Channels by hand: 3x4 = 12 after the initial squeeze; a block of u units adds (u - 1) * growth; each
    squeeze-and-drop doubles (x4, half dropped). cpu-m: 12 + 6 = 18 -> 36 + 6 = 42 -> 84; cpu-l: 12 + 12 = 24 -> 48 + 12
    = 60 -> 120; 64 / 2^3 = 8 px."""
    config = PRESETS[preset]
    assert config.name == name and config.dequantization == "uniform" and config.coupling_width == 48
    counts = parameter_breakdown(preset, 64, 64)
    assert counts["latent"] == (latent_channels, 8, 8)
    parts = ("coupling_networks", "cross_unit_g", "actnorm_and_1x1", "dequantizer", "priors")
    assert sum(counts[p] for p in parts) == counts["total"]
    assert parameter_breakdown("cpu")["total"] < counts["total"] < parameter_breakdown("45-6")["total"]
