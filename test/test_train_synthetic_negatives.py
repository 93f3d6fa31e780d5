"""SynDenseHybrid negatives (issue 14): object-like blob masks against their closed form, per-image sample sizes, the
paste rules of (4.17) with masks, L_mle on patches of several sizes, the Tab. 6.11 controls (uniform noise, inlier
crops) with no flow, and lambda kept at a target share of the flow gradient (checked against autograd)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY, randomize_batchnorm
from densehybrid_ros.config import ConfigError
from densehybrid_ros.models import build_model
from densehybrid_training.config import TrainConfig, load_train_config
from densehybrid_training.engine import _joint_step
from densehybrid_training.flow import build_flow
from densehybrid_training.flow_optim import FLOW_GRAD_CLIP, FlowOptimConfig
from densehybrid_training.losses import densehybrid_loss
from densehybrid_training.synthetic import (BoundaryShareController, JointFlowTraining, SyntheticConfig, blob_mask,
                                            blob_mask_from, flow_mle_loss, paste_synthetic)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def _trained_flow(seed: int = 0):
    torch.manual_seed(seed)
    flow = randomize_batchnorm(build_flow("tiny"), seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # couplings no longer the identity; ActNorm as after pretraining
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for name, buffer in flow.named_buffers():
            if name.endswith("initialized"):
                buffer.fill_(True)
    return flow


def _joint(source: str = "flow", seed: int = 0, **cfg) -> JointFlowTraining:
    flow = _trained_flow(seed) if source == "flow" else None
    return JointFlowTraining(flow, SyntheticConfig(**{"side_range": (16, 32), "source": source, **cfg}), MEAN, STD,
                             seed=seed, device=torch.device("cpu"))


def _batch(n: int = 3, h: int = 64, w: int = 96, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=gen)
    labels = torch.randint(0, TINY.num_classes, (n, h, w), generator=gen)
    labels[:, :2] = 255
    return x, labels, torch.zeros(n, h, w, dtype=torch.bool)


def _to01(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


# ---------------------------------------------------------------- blob masks

def test_blob_without_harmonics_is_the_inscribed_ellipse():
    h, w = 24, 40
    mask = blob_mask_from(h, w, [0, 0, 0, 0], [0, 0, 0, 0])
    expected = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            u, v = (c + 0.5 - w / 2) / (w / 2), (r + 0.5 - h / 2) / (h / 2)
            expected[r, c] = u * u + v * v <= 1.0
    assert np.array_equal(mask, expected)
    assert mask.sum() / (h * w) == pytest.approx(math.pi / 4, abs=0.03)


def test_blob_with_one_harmonic_by_hand():
    # r(theta) = 1 + 0.5 cos(2 theta), max 1.5: the outline reaches the frame's sides along u (r = 1.5 / 1.5); its
    # height is max_theta r(theta) sin(theta) / 1.5 = max_s (1.5 s - s^3) / 1.5 (s = sin theta, cos 2t = 1 - 2 s^2),
    # at s = 1/sqrt(2): sqrt(2) / 3 of the half-height (not r(90 deg) = 1/3)
    h, w = 60, 60
    mask = blob_mask_from(h, w, [0.5, 0, 0, 0], [0, 0, 0, 0])
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    assert cols[0] == 0 and cols[-1] == w - 1  # touches left and right
    half_height = (rows[-1] - rows[0] + 1) / 2
    assert half_height == pytest.approx(h / 2 * math.sqrt(2) / 3, abs=1.0)
    # a pixel on the diagonal: theta = 45 deg, r = 1 / 1.5 -> inside iff rho <= 2/3
    for k, inside in ((13, True), (14, False)):  # pixel (30 + k, 30 + k): rho = (k + 0.5) sqrt(2) / 30
        rho = (k + 0.5) * math.sqrt(2) / 30
        assert (rho <= 2 / 3) is inside
        assert bool(mask[30 + k, 30 + k]) is inside


def test_random_blobs_are_one_star_shaped_component():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = (int(v) for v in rng.choice(np.arange(16, 129, 8), 2))
        mask = blob_mask(rng, h, w)
        assert mask.shape == (h, w) and mask[h // 2, w // 2]
        count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert count == 2  # background + one blob
        assert 0.25 < mask.mean() <= math.pi / 4 + 0.02
        # star-shaped around the centre: the pixel halfway to the centre of every inside pixel is inside too
        rr, cc = np.nonzero(mask)
        mid_r = np.floor((rr + 0.5 + h / 2) / 2).astype(int)
        mid_c = np.floor((cc + 0.5 + w / 2) / 2).astype(int)
        assert mask[mid_r, mid_c].mean() > 0.99


def test_blob_amplitudes_must_keep_the_radius_positive():
    with pytest.raises(ValueError, match="positive"):
        blob_mask_from(16, 16, [1.2, 0, 0, 0], [0, 0, 0, 0])  # r(90 deg) = -0.2


# ---------------------------------------------------------------- paste with masks, per-image sizes

def test_masked_paste_follows_4_17():
    x01 = torch.rand(3, 20, 30)
    labels = torch.randint(0, 5, (20, 30))
    d_out = torch.zeros(20, 30, dtype=torch.bool)
    sample = torch.rand(3, 8, 16)
    mask = torch.from_numpy(blob_mask_from(8, 16, [0, 0, 0, 0], [0, 0, 0, 0]))
    out, lab, dout, replaced = paste_synthetic(x01, labels, d_out, sample, 5, 7, mask)
    m = torch.zeros(20, 30, dtype=torch.bool)
    m[5:13, 7:23] = mask
    padded = torch.zeros_like(x01)
    padded[:, 5:13, 7:23] = sample
    torch.testing.assert_close(out, torch.where(m, padded, x01))  # x' = (1 - m) x+ + pad(x-, m)
    assert torch.equal(dout, m) and torch.equal(lab, labels.masked_fill(m, 255))
    torch.testing.assert_close(replaced, x01[:, 5:13, 7:23])  # the flow scores the whole frame of the sample


def test_rectangles_with_one_size_per_batch_keep_the_earlier_draws():
    """shape 'rectangle', sizes 'batch': the generator seeded by (seed, 104729, step) draws h, w, then each image's
    top-left corner, as before masks and per-image sizes existed."""
    joint = _joint("flow", seed=4, side_range=(16, 48))
    x, labels, d_out = _batch()
    _, _, _, synthetic, replaced = joint.mix(x, labels, d_out, step=9)
    rng = np.random.default_rng([4, 104729, 9])
    h = int(rng.choice(np.arange(16, 49, 8)))
    w = int(rng.choice(np.arange(16, 49, 8)))
    for i in range(3):
        top, left = int(rng.integers(0, 64 - h + 1)), int(rng.integers(0, 96 - w + 1))
        expected = torch.zeros(64, 96, dtype=torch.bool)
        expected[top : top + h, left : left + w] = True
        assert torch.equal(synthetic[i], expected)
    assert isinstance(replaced, torch.Tensor) and replaced.shape == (3, 3, h, w)


def test_per_image_sizes_and_blob_shapes():
    joint = _joint("flow", side_range=(16, 48), sizes="image", shape="blob")
    x, labels, d_out = _batch(n=4)
    x01 = _to01(x)
    sizes_seen = set()
    for step in range(3):
        mixed, labels2, d_out2, synthetic, replaced = joint.mix(x, labels, d_out, step)
        assert isinstance(replaced, list) and len(replaced) == 4
        sizes = [tuple(p.shape[-2:]) for p in replaced]
        sizes_seen.update(sizes)
        assert len(set(sizes)) > 1  # not one size per batch
        mixed01 = _to01(mixed.detach())
        for i in range(4):
            m = synthetic[i]
            rows, cols = torch.nonzero(m, as_tuple=True)
            assert m.sum() < sizes[i][0] * sizes[i][1]  # a blob, not its whole frame
            assert (labels2[i][m] == 255).all() and torch.equal(d_out2[i], m)
            torch.testing.assert_close(mixed01[i][:, ~m], x01[i][:, ~m], atol=1e-5, rtol=0)  # outside: untouched
            assert torch.equal(labels2[i][~m], labels[i][~m])
            # the replaced patch is the inlier content under the blob's h x w frame, which contains the blob
            assert rows.max() - rows.min() < sizes[i][0] and cols.max() - cols.min() < sizes[i][1]
        assert len(joint.last_samples) == 4
        assert joint.last_pixels.shape == (3, int(synthetic.sum()))
    assert len(sizes_seen) >= 6


def test_mixed_shapes_give_rectangles_and_blobs():
    joint = _joint("uniform", side_range=(16, 32), sizes="image", shape="mixed")
    x, labels, d_out = _batch(n=8)
    kinds = []
    for step in range(4):
        _, _, _, synthetic, _ = joint.mix(x, labels, d_out, step)
        for i in range(8):
            rows, cols = torch.nonzero(synthetic[i], as_tuple=True)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            kinds.append(bool(synthetic[i].sum() == box))
    assert 0.25 < np.mean(kinds) < 0.75  # rectangles with probability 0.5


def test_mle_on_patches_of_several_sizes_is_the_mean_of_per_image_bits_per_dim():
    flow = _trained_flow().eval()  # eval: BatchNorm statistics do not depend on how patches are grouped
    gen = torch.Generator().manual_seed(1)
    patches = [torch.rand(3, h, w, generator=gen) for h, w in ((16, 24), (8, 8), (16, 24), (24, 16))]
    torch.manual_seed(5)
    got = flow_mle_loss(flow, patches)
    torch.manual_seed(5)  # the same dequantisation draws: groups in first-seen size order, images in order
    g1 = flow.bits_per_dim(torch.stack([patches[0], patches[2]]))
    g2 = flow.bits_per_dim(patches[1][None])
    g3 = flow.bits_per_dim(patches[3][None])
    expected = (g1.sum() + g2.sum() + g3.sum()) / 4
    torch.testing.assert_close(got, expected)
    torch.manual_seed(5)
    batch = flow_mle_loss(flow, torch.stack([patches[0], patches[2]]))  # one batch: its mean bits/dim
    torch.manual_seed(5)
    torch.testing.assert_close(batch, flow.bits_per_dim(torch.stack([patches[0], patches[2]])).mean())


@pytest.mark.parametrize("norm, changes", [("running", False), ("batch", True)])
def test_mle_norm_running_leaves_batchnorm_statistics_alone(norm, changes):
    joint = _joint("flow", sizes="image", mle_norm=norm)
    x, labels, d_out = _batch()
    mixed, _, _, synthetic, replaced = joint.mix(x, labels, d_out, step=0)
    before = {k: v.clone() for k, v in joint.flow.named_buffers() if "running" in k}
    terms = joint.flow_loss(torch.zeros(3, 5, 64, 96), synthetic, replaced, step=0)
    after = dict(joint.flow.named_buffers())
    assert any(not torch.equal(v, after[k]) for k, v in before.items()) is changes
    assert terms["mle_bpd"].requires_grad and all(m.training for m in joint.flow.modules())


# ---------------------------------------------------------------- controls (thesis Tab. 6.11)

def test_uniform_noise_control():
    joint = _joint("uniform", side_range=(32, 48), sizes="image")
    assert joint.flow is None and joint.optimizer is None
    x, labels, d_out = _batch(n=4)
    mixed, labels2, d_out2, synthetic, replaced = joint.mix(x, labels, d_out, step=0)
    assert replaced is None and joint.flow_loss(torch.zeros(4, 5, 64, 96), synthetic, replaced, 0) == {}
    pasted = _to01(mixed).permute(1, 0, 2, 3)[:, synthetic]  # (3, pasted pixels)
    assert pasted.min() >= -1e-6 and pasted.max() <= 1 + 1e-6
    assert float(pasted.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(pasted.std()) == pytest.approx(1 / math.sqrt(12), abs=0.02)  # U(0, 1)
    assert (labels2[synthetic] == 255).all() and torch.equal(d_out2, synthetic)
    assert joint.state_dict() == {}


def test_inlier_crop_control_pastes_another_image_of_the_batch():
    joint = _joint("inlier_crops", side_range=(16, 24), sizes="image")
    x, labels, d_out = _batch(n=3, h=40, w=48)
    x01 = _to01(x)
    mixed, _, _, synthetic, replaced = joint.mix(x, labels, d_out, step=2)
    assert replaced is None
    mixed01 = _to01(mixed)
    for i in range(3):
        rows, cols = torch.nonzero(synthetic[i], as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        h, w = int(rows.max()) - top + 1, int(cols.max()) - left + 1
        patch = mixed01[i, :, top : top + h, left : left + w]
        found = [(j, a, b) for j in range(3) for a in range(40 - h + 1) for b in range(48 - w + 1)
                 if torch.allclose(x01[j, :, a : a + h, b : b + w], patch, atol=1e-5)]
        assert found and all(j != i for j, _, _ in found)  # content of another inlier image


def test_control_step_updates_the_segmenter_by_its_own_loss_only():
    joint = _joint("uniform", sizes="image", shape="mixed")
    model = randomize_batchnorm(build_model(TINY)).train()
    reference = randomize_batchnorm(build_model(TINY)).train()
    reference.load_state_dict(model.state_dict())
    cfg = TrainConfig(mode="finetune", synthetic=joint.cfg)
    x, labels, d_out = _batch(n=2)
    mixed, labels2, d_out2, _, _ = joint.mix(x, labels, d_out, step=0)  # the same draws the step makes
    out = reference(mixed)
    loss = densehybrid_loss(out.logits, out.inlier_logit, labels2, d_out2)["total"]
    expected = torch.autograd.grad(loss, list(reference.parameters()), allow_unused=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    terms = _joint_step(cfg, model, joint, optimizer, x, labels, d_out, step=0)
    assert not any(k.startswith("flow/") for k in terms)
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p),
                                   torch.zeros_like(p) if g is None else g)


def test_flow_source_needs_a_checkpoint(tmp_path, capsys):
    from densehybrid_training.cli import main

    rc = main(["finetune", "--set", f"data.root={tmp_path / 'none'}", "--set", "init=x.pt",
               "--set", "synthetic.source=flow"])
    assert rc == 2 and "synthetic.flow_checkpoint: required" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="synthetic: source must be one of"):
        load_train_config(None, ["synthetic.source=gan"])
    with pytest.raises(ConfigError, match="synthetic: shape must be one of"):
        load_train_config(None, ["synthetic.shape=star"])
    with pytest.raises(ConfigError, match="synthetic: boundary_share must be >= 0"):
        load_train_config(None, ["synthetic.boundary_share=-1"])
    with pytest.raises(ConfigError, match="synthetic: share_average must be one of"):
        load_train_config(None, ["synthetic.share_average=median"])


# ---------------------------------------------------------------- lambda at a target share

def test_share_controller_by_hand():
    c = BoundaryShareController(target=0.5, every=2, momentum=0.5, lam=0.03, lam_range=(1e-3, 10.0))
    assert c.update(2.0, 4.0) == pytest.approx(0.5 / 0.5)  # first measurement: average ratio = 0.5, lambda set
    assert c.update(4.0, 4.0) == pytest.approx(1.0)  # 2nd: average ratio (0.5 + 1) / 2 = 0.75, lambda kept
    lam = c.update(1.0, 8.0)  # 3rd: average ratio 0.5 * 0.75 + 0.5 * 0.125 = 0.4375 -> lambda = 0.5 / 0.4375
    assert lam == pytest.approx(0.5 / 0.4375) and c.avg_ratio == pytest.approx(0.4375)
    assert c.update(0.0, 5.0) == lam and c.count == 3  # no boundary gradient: skipped
    assert c.update(float("nan"), 5.0) == lam
    clamped = BoundaryShareController(0.5, 1, 0.0, 0.03, (1e-3, 0.1))
    assert clamped.update(1.0, 100.0) == 0.1
    restored = BoundaryShareController(0.5, 2, 0.5, 0.03, (1e-3, 10.0))
    restored.load_state_dict(c.state_dict())
    assert restored.state_dict() == c.state_dict()


def test_share_controller_survives_one_exploding_step():
    # measured at temperature 1.5: one step's boundary gradient had norm 1e7 (ratio ~1e6); unclipped, the running
    # average would be ~1e5 and lambda pinned to its floor for hundreds of steps
    c = BoundaryShareController(target=0.25, every=1, momentum=0.9, lam=1.0, lam_range=(1e-4, 1e3))
    c.update(1.0, 2.0)  # average ratio 0.5
    lam = c.update(1e7, 8.0)  # ratio 1.25e6 enters as 10 x 0.5 = 5: average 0.9 * 0.5 + 0.1 * 5 = 0.95
    assert c.avg_ratio == pytest.approx(0.95) and lam == pytest.approx(0.25 / 0.95)
    c.update(1e-9, 8.0)  # and a vanishing one as 0.095: average 0.9 * 0.95 + 0.1 * 0.095
    assert c.avg_ratio == pytest.approx(0.9 * 0.95 + 0.0095)


def test_share_controller_log_average_by_hand():
    c = BoundaryShareController(target=0.5, every=1, momentum=0.5, lam=0.03, lam_range=(1e-3, 10.0), average="log")
    assert c.update(2.0, 4.0) == pytest.approx(0.5 / 0.5)  # first measurement initialises: ratio 0.5
    assert c.update(4.0, 4.0) == pytest.approx(0.5 / math.sqrt(0.5 * 1.0))  # geometric mean of 0.5 and 1
    # a spike enters clipped at 10x the running average, here 10 * sqrt(0.5)
    avg = math.sqrt(0.5)
    assert c.update(1e6, 1.0) == pytest.approx(0.5 / math.sqrt(avg * 10 * avg))
    with pytest.raises(ValueError, match="average"):
        BoundaryShareController(0.5, 1, 0.5, 0.03, (1e-3, 10.0), average="median")


def test_share_controller_typical_step_under_heavy_tailed_ratios():
    # a heavy-tailed ratio stream like the 5,400-step run's: a typical 0.1, every 10th step 1e3 (it enters clipped to
    # 10x the running average). lambda * 0.1 is the share L_jsd gets on most steps.
    def typical_share(average: str) -> float:
        c = BoundaryShareController(0.25, every=1, momentum=0.9, lam=1.0, lam_range=(1e-6, 1e6), average=average)
        shares = []
        for t in range(2000):
            lam = c.update(1e3 if t % 10 == 9 else 0.1, 1.0)
            if t >= 1000 and t % 10 == 0:
                shares.append(lam * 0.1)
        return float(np.median(shares))

    # geometric: the running average stays near the geometric mean of nine 0.1s and one spike clipped at 10x
    # (0.1 * 10^0.1 = 0.126), so the typical step gets most of the target (0.25 * 0.1 / 0.126 = 0.2)
    log = typical_share("log")
    assert 0.125 < log <= 0.25
    # arithmetic: each clipped spike lifts the mean far above the typical ratio
    assert typical_share("mean") < 0.5 * log


def test_backward_flow_sums_the_terms_and_holds_the_target_share():
    joint = _joint("flow", jsd_weight=0.03, boundary_share=0.25, share_every=1, share_momentum=0.0)
    model = randomize_batchnorm(build_model(TINY)).train()
    x, labels, d_out = _batch(n=2)
    params = list(joint.flow.parameters())
    mixed, labels2, d_out2, synthetic, replaced = joint.mix(x, labels, d_out, step=0)
    out = model(mixed)
    terms = joint.flow_loss(out.logits, synthetic, replaced, step=0)
    g_b = torch.autograd.grad(terms["jsd"], params, retain_graph=True, allow_unused=True)
    g_m = torch.autograd.grad(terms["mle_bpd"], params, retain_graph=True, allow_unused=True)
    nb = math.sqrt(sum(float(g.double().pow(2).sum()) for g in g_b if g is not None))
    nm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in g_m if g is not None))
    row = joint.diagnostics(out.logits, labels2, d_out2, synthetic, terms)  # at the starting lambda
    assert row["jsd_weight"] == 0.03 and row["boundary_grad_share"] == pytest.approx(0.03 * nb / nm, rel=1e-4)
    joint.backward_flow(terms)
    for p, b, m in zip(params, g_b, g_m):  # lambda (0.03, in force for this step) * g_jsd + g_mle
        expected = (torch.zeros_like(p) if b is None else 0.03 * b) + (torch.zeros_like(p) if m is None else m)
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), expected)
    assert joint.jsd_weight == pytest.approx(0.25 * nm / nb, rel=1e-6)  # lambda for the next steps
    # with the new lambda, the share on this batch is the target
    assert row["boundary_grad_share"] * joint.jsd_weight / 0.03 == pytest.approx(0.25, rel=1e-3)
    state = joint.state_dict()
    assert state["share"]["lam"] == joint.jsd_weight and "scheduler" in state


def test_joint_flow_with_the_thesis_recipe_is_adamax_at_a_constant_rate():
    joint = _joint("flow", flow_lr=2e-5, flow_optim=FlowOptimConfig(recipe="thesis"))
    assert isinstance(joint.optimizer, torch.optim.Adamax)
    for _ in range(3):
        assert joint.optimizer.param_groups[0]["lr"] == 2e-5
        joint.step()


def test_flow_step_clips_the_gradient_norm_before_adamax_sees_it():
    joint = _joint("flow", flow_lr=2e-5, flow_optim=FlowOptimConfig(recipe="thesis"))
    params = [p for p in joint.flow.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 1e7)
    joint.step()
    # Adamax's first step stores u = max(0, |g| + eps) per element: the L2 norm of u is that of the clipped gradient
    u = math.sqrt(sum(float(joint.optimizer.state[p]["exp_inf"].double().pow(2).sum()) for p in params))
    assert u == pytest.approx(FLOW_GRAD_CLIP, rel=1e-3)


# ---------------------------------------------------------------- the flow trained on every N-th step

def test_flow_every_trains_the_flow_on_every_nth_step_only():
    every = _joint("flow", flow_every=3, sizes="image", shape="mixed")
    thesis = _joint("flow", sizes="image", shape="mixed")  # the same flow, trained on every step
    start = [p.detach().clone() for p in every.flow.parameters()]
    x, labels, d_out = _batch(n=2)
    # a step that does not train the flow pastes the same draws, without gradients, and has no flow loss
    torch.manual_seed(5)
    mixed, _, _, synthetic, replaced = every.mix(x, labels, d_out, step=0)
    torch.manual_seed(5)
    reference, _, _, synthetic_ref, _ = thesis.mix(x, labels, d_out, step=0)
    assert not mixed.requires_grad and reference.requires_grad
    torch.testing.assert_close(mixed, reference.detach())
    assert torch.equal(synthetic, synthetic_ref) and synthetic.any()
    model = randomize_batchnorm(build_model(TINY)).train()
    assert every.flow_loss(model(mixed).logits, synthetic, replaced, step=0) == {}
    # steps 0..5 with a segmenter that does not move (lr 0): the flow changes after steps 2 and 5 alone
    cfg = TrainConfig(mode="finetune", synthetic=every.cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    changed = []
    for step in range(6):
        before = [p.detach().clone() for p in every.flow.parameters()]
        torch.manual_seed(100 + step)
        terms = _joint_step(cfg, model, every, optimizer, x, labels, d_out, step)
        changed.append(any(not torch.equal(a, b) for a, b in zip(before, every.flow.parameters())))
        assert any(k.startswith("flow/") for k in terms) == (step in (2, 5))
        if step == 2:
            after_first = [p.detach().clone() for p in every.flow.parameters()]
    assert changed == [False, False, True, False, False, True]
    # its first flow update is the thesis step's: the same flow, segmenter and draws give the same new flow
    torch.manual_seed(102)
    _joint_step(TrainConfig(mode="finetune", synthetic=thesis.cfg), model, thesis, optimizer, x, labels, d_out, 2)
    for a, b, s in zip(after_first, thesis.flow.parameters(), start):
        torch.testing.assert_close(a, b.detach())
    assert any(not torch.equal(a, s) for a, s in zip(after_first, start))


def test_flow_every_is_validated():
    with pytest.raises(ConfigError, match="synthetic: flow_every must be >= 1"):
        load_train_config(None, ["synthetic.flow_every=0"])
    with pytest.raises(ConfigError, match=r"diagnostics_every \(25\) must be a multiple of flow_every \(4\)"):
        load_train_config(None, ["synthetic.flow_every=4", "synthetic.diagnostics_every=25"])
    load_train_config(None, ["synthetic.flow_every=4", "synthetic.diagnostics_every=100"])
    with pytest.raises(ConfigError, match=r"flow_every \(2\) and mle_every \(2\) cannot both exceed 1"):
        load_train_config(None, ["synthetic.flow_every=2", "synthetic.mle_every=2"])
    # the controls train no flow: any diagnostics period goes
    load_train_config(None, ["synthetic.source=uniform", "synthetic.flow_every=4", "synthetic.diagnostics_every=25"])


# ---------------------------------------------------------------- samples drawn at a fraction of their size

def test_sample_scale_draws_small_samples_and_upsamples_them_bilinearly():
    joint = _joint("flow", sample_scale=0.5, sizes="image", shape="rectangle", side_range=(16, 48))
    flow = joint.flow
    x, labels, d_out = _batch(n=3)
    torch.manual_seed(7)
    mixed, _, _, synthetic, replaced = joint.mix(x, labels, d_out, step=1)
    mixed01 = _to01(mixed.detach())
    torch.manual_seed(7)  # the same latents, drawn image by image
    for i in range(3):
        rows, cols = torch.nonzero(synthetic[i], as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        h, w = int(rows.max()) - top + 1, int(cols.max()) - left + 1
        small = (max(8, 8 * math.floor(h / 16 + 0.5)), max(8, 8 * math.floor(w / 16 + 0.5)))  # half, to 8 px
        assert joint.flow_size(h, w) == small
        with torch.no_grad():
            flow.eval()
            sample = flow.sample(1, *small)[0].permute(1, 2, 0).numpy()
            flow.train()
        expected = cv2.resize(sample, (w, h), interpolation=cv2.INTER_LINEAR)  # half-pixel centres
        got = mixed01[i, :, top : top + h, left : left + w].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_sample_scale_scores_the_replaced_patch_at_the_sample_size():
    joint = _joint("flow", sample_scale=0.5, sizes="image", side_range=(32, 32), mle_norm="running")
    model = randomize_batchnorm(build_model(TINY)).train()
    x, labels, d_out = _batch(n=2)
    mixed, _, _, synthetic, replaced = joint.mix(x, labels, d_out, step=0)
    assert [tuple(p.shape) for p in replaced] == [(3, 32, 32)] * 2
    torch.manual_seed(3)
    terms = joint.flow_loss(model(mixed).logits, synthetic, replaced, step=0)
    halves = torch.stack([p.detach().clamp(0, 1).reshape(3, 16, 2, 16, 2).mean(dim=(2, 4)) for p in replaced])
    torch.manual_seed(3)  # the same dequantisation draws
    with torch.no_grad():
        joint.flow.eval()
        expected = joint.flow.bits_per_dim(halves).mean()
    torch.testing.assert_close(terms["mle_bpd"].detach(), expected)
    with pytest.raises(ConfigError, match=r"synthetic: sample_scale must be in \(0, 1\]"):
        load_train_config(None, ["synthetic.sample_scale=0"])
