"""Circle Loss with pose-aware negatives and the geodesic loss, against brute force.

The expected values come from ``circle_brute_force`` below: the Circle Loss formula of Sun et al.
(CVPR 2020), written with Python loops over anchors, with its own pair bookkeeping and its own
geodesic distance (arccos of the trace). It averages over anchors that have at least one positive
and one negative, as PML's ``AvgNonZeroReducer`` does (the per-anchor softplus is > 0, and PML
zeroes the rows lacking a positive or a negative). Like PML and the paper's reference code, the
weights alpha_p, alpha_n are constants for backpropagation (detached).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from clerf_ray.losses import (
    ContrastivePoseLoss,
    create_contrastive_loss,
    geodesic_loss,
    pose_aware_pair_indices,
)

M, GAMMA = 0.25, 64.0


def _geodesic_arccos(A: np.ndarray, B: np.ndarray) -> float:
    c = (np.trace(A.T @ B) - 1.0) / 2.0
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def circle_per_anchor(emb, labels, poses, m=M, gamma=GAMMA, margin_deg=0.0):
    """Brute-force Circle Loss per anchor: list of (anchor index, loss tensor)."""
    X = emb / emb.norm(dim=1, keepdim=True)
    poses = np.asarray(poses, dtype=np.float64)
    out = []
    for i in range(len(X)):
        sp, sn = [], []
        for j in range(len(X)):
            if j == i:
                continue
            s = (X[i] * X[j]).sum()
            if labels[j] == labels[i]:
                sp.append(s)
            elif math.degrees(_geodesic_arccos(poses[i], poses[j])) >= margin_deg:
                sn.append(s)
        if not sp or not sn:
            continue
        sp, sn = torch.stack(sp), torch.stack(sn)
        ap = torch.relu(1 + m - sp.detach())
        an = torch.relu(sn.detach() + m)
        lp = torch.logsumexp(-gamma * ap * (sp - (1 - m)), dim=0)
        ln = torch.logsumexp(gamma * an * (sn - m), dim=0)
        out.append((i, torch.nn.functional.softplus(lp + ln)))
    return out


def circle_brute_force(emb, labels, poses, **kw):
    per = circle_per_anchor(emb, labels, poses, **kw)
    if not per:
        return emb.sum() * 0.0
    return torch.stack([v for _, v in per]).mean()


def pair_batch(anchor, positive, R):
    """The 2B-sample view of a pair batch: embeddings, pair labels, poses."""
    B = len(anchor)
    emb = torch.cat([torch.as_tensor(anchor), torch.as_tensor(positive)])
    labels = list(range(B)) * 2
    poses = np.concatenate([np.asarray(R), np.asarray(R)])
    return emb, labels, poses


def far_apart_rotations(n, seed, min_deg=30.0):
    """n rotations pairwise more than min_deg apart (rejection sampling)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        r = Rotation.random(random_state=rng).as_matrix()
        if all(math.degrees(_geodesic_arccos(r, q)) > min_deg for q in out):
            out.append(r)
    return np.stack(out)


def small_turn(R, degrees, axis=(0.3, -0.5, 0.8)):
    axis = np.asarray(axis) / np.linalg.norm(axis)
    return R @ Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()


# --------------------------------------------------------------------------- Circle Loss values


def test_circle_loss_hand_built_embeddings_match_brute_force():
    # Three pairs in 3D: pair 0 tight, pair 1 loose, pair 2 on the opposite side; one negative
    # (anchor 1) sits close to anchor 0.
    anchor = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [-1.0, 0.1, 0.0]], dtype=torch.float64)
    positive = torch.tensor(
        [[0.95, 0.1, 0.0], [0.0, 1.0, 0.2], [-0.8, -0.2, 0.3]], dtype=torch.float64
    )
    R = far_apart_rotations(3, seed=0)
    loss = ContrastivePoseLoss(m=M, gamma=GAMMA, negative_margin_deg=5.0)(
        anchor, positive, torch.from_numpy(R)
    )
    expected = circle_brute_force(*pair_batch(anchor, positive, R), margin_deg=5.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert loss.item() > 0.1  # a real, non-degenerate value


@pytest.mark.parametrize("m,gamma", [(0.25, 64.0), (0.4, 80.0), (0.25, 256.0)])
def test_circle_loss_random_embeddings_match_brute_force(m, gamma):
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(6, 8, generator=g, dtype=torch.float64)
    positive = anchor + 0.7 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    R = far_apart_rotations(6, seed=1)
    loss = ContrastivePoseLoss(m=m, gamma=gamma, negative_margin_deg=10.0)(
        anchor, positive, torch.from_numpy(R)
    )
    expected = circle_brute_force(
        *pair_batch(anchor, positive, R), m=m, gamma=gamma, margin_deg=10.0
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


def test_circle_loss_gradient_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    a0 = torch.randn(5, 6, generator=g, dtype=torch.float64)
    p0 = a0 + 0.5 * torch.randn(5, 6, generator=g, dtype=torch.float64)
    R = far_apart_rotations(5, seed=2)
    R[3] = small_turn(R[1], 3.0)  # one masked pair of pairs
    a, p = a0.clone().requires_grad_(), p0.clone().requires_grad_()
    ContrastivePoseLoss(negative_margin_deg=5.0)(a, p, torch.from_numpy(R)).backward()
    a2, p2 = a0.clone().requires_grad_(), p0.clone().requires_grad_()
    emb = torch.cat([a2, p2])
    circle_brute_force(emb, list(range(5)) * 2, np.concatenate([R, R]), margin_deg=5.0).backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p.grad, p2.grad, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- pose-aware masking


def _near_negative_batch():
    """Four pairs; pair 1's pose is 2 degrees from pair 0's, and anchor 1's embedding is close to
    anchor 0's, so including it as a negative would weigh heavily. Pair 2 (a true negative) is
    moderately close to anchor 0 too, so that it carries a visible gradient."""
    g = torch.Generator().manual_seed(3)
    anchor = torch.randn(4, 8, generator=g, dtype=torch.float64)
    anchor[1] = anchor[0] + 0.2 * torch.randn(8, generator=g, dtype=torch.float64)
    anchor[2] = anchor[0] + 0.5 * torch.randn(8, generator=g, dtype=torch.float64)
    positive = anchor + 0.4 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    R = far_apart_rotations(4, seed=3)
    R[1] = small_turn(R[0], 2.0)
    return anchor, positive, R


def test_pose_near_negative_is_excluded_from_the_loss():
    anchor, positive, R = _near_negative_batch()
    loss = ContrastivePoseLoss(negative_margin_deg=5.0)(anchor, positive, torch.from_numpy(R))
    batch = pair_batch(anchor, positive, R)
    omitted = circle_brute_force(*batch, margin_deg=5.0).item()
    included = circle_brute_force(*batch, margin_deg=0.0).item()
    assert loss.item() == pytest.approx(omitted, rel=1e-10)
    assert abs(included - omitted) > 1e-2 * omitted
    # Margin 0 turns the masking off.
    unmasked = ContrastivePoseLoss(negative_margin_deg=0.0)(anchor, positive, torch.from_numpy(R))
    assert unmasked.item() == pytest.approx(included, rel=1e-10)


def test_masked_negative_does_not_affect_the_anchor_loss():
    anchor, positive, R = _near_negative_batch()
    R_t = torch.from_numpy(R)
    loss_fn = ContrastivePoseLoss(negative_margin_deg=5.0)
    a = anchor.clone().requires_grad_()
    p = positive.clone().requires_grad_()
    per = loss_fn.per_anchor_losses(a, p, R_t)
    expected = dict(circle_per_anchor(*pair_batch(anchor, positive, R), margin_deg=5.0))
    assert sorted(expected) == list(range(8))
    for i in range(8):
        assert per[i].item() == pytest.approx(expected[i].item(), rel=1e-10)

    # Anchor 0: pair 1 (pose-near) is masked, pair 2 is a true negative.
    per[0].backward()
    assert torch.all(a.grad[1] == 0) and torch.all(p.grad[1] == 0)
    assert a.grad[2].abs().max() > 1e-6 and p.grad[2].abs().max() > 1e-6

    # Moving the masked sample leaves anchor 0's loss as it was; moving a true negative does not.
    g = torch.Generator().manual_seed(4)
    moved = anchor.clone()
    moved[1] = torch.randn(8, generator=g, dtype=torch.float64)
    assert loss_fn.per_anchor_losses(moved, positive, R_t)[0].item() == pytest.approx(
        per[0].item(), rel=1e-12
    )
    moved = anchor.clone()
    moved[2] = anchor[0]  # the true negative now coincides with the anchor
    assert loss_fn.per_anchor_losses(moved, positive, R_t)[0].item() > per[0].item() + 1e-3


def test_pair_indices_mask_by_geodesic_distance():
    R = far_apart_rotations(3, seed=5)
    R[2] = small_turn(R[0], 4.0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    poses = torch.from_numpy(np.concatenate([R, R]))
    a1, p, a2, n = pose_aware_pair_indices(labels, poses, math.radians(5.0))
    assert set(zip(a1.tolist(), p.tolist(), strict=True)) == {
        (0, 3),
        (3, 0),
        (1, 4),
        (4, 1),
        (2, 5),
        (5, 2),
    }
    neg = set(zip(a2.tolist(), n.tolist(), strict=True))
    # Pairs 0 and 2 are 4 degrees apart: none of their four samples is a negative of the other's.
    for i in (0, 3):
        for j in (2, 5):
            assert (i, j) not in neg and (j, i) not in neg
    assert (0, 1) in neg and (2, 4) in neg and (5, 1) in neg
    assert len(neg) == 6 * 4 - 8


def test_all_negatives_masked_gives_zero_loss_and_gradient():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    R = torch.from_numpy(np.stack([small_turn(np.eye(3), d) for d in (0.0, 1.0, 2.0)]))
    loss = ContrastivePoseLoss(negative_margin_deg=5.0)(a, p, R)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(a.grad == 0) and torch.all(p.grad == 0)


def test_distributed_flag_without_process_group_is_plain_and_silent():
    anchor, positive, R = _near_negative_batch()
    R_t = torch.from_numpy(R)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PML's wrapper warns when used undistributed
        d = ContrastivePoseLoss(distributed=True)(anchor, positive, R_t)
    expected = circle_brute_force(*pair_batch(anchor, positive, R), margin_deg=5.0)
    assert d.item() == pytest.approx(expected.item(), rel=1e-10)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="negative_margin_deg"):
        ContrastivePoseLoss(negative_margin_deg=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        ContrastivePoseLoss(gamma=0.0)
    with pytest.raises(ValueError, match="R must be"):
        ContrastivePoseLoss()(torch.randn(2, 4), torch.randn(2, 4), torch.eye(3).expand(3, 3, 3))


def test_create_contrastive_loss_from_pretrain_section():
    from clerf_ray.config import PretrainSection

    section = PretrainSection(m=0.3, gamma=32.0, negative_margin_deg=7.5)
    loss = create_contrastive_loss(section, distributed=True)
    assert (loss.m, loss.gamma, loss.negative_margin_deg, loss.distributed) == (
        0.3,
        32.0,
        7.5,
        True,
    )
    assert loss.circle.m == 0.3 and loss.circle.gamma == 32.0
    assert create_contrastive_loss({"m": 0.1}).m == 0.1
    with pytest.raises(TypeError, match="margin"):
        create_contrastive_loss(margin=3.0)


def test_half_precision_embeddings_are_computed_in_float32():
    anchor, positive, R = _near_negative_batch()
    loss = ContrastivePoseLoss()(anchor.half(), positive.half(), torch.from_numpy(R).float())
    expected = circle_brute_force(
        *pair_batch(anchor.half().double(), positive.half().double(), R), margin_deg=5.0
    )
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


# --------------------------------------------------------------------------- distributed (2 ranks)


def _dist_worker(rank, world, init_file, inputs, out_dir, margin_deg):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        anchor, positive, R = (torch.from_numpy(x) for x in inputs[rank])
        anchor.requires_grad_()
        positive.requires_grad_()
        loss = ContrastivePoseLoss(
            m=M, gamma=GAMMA, negative_margin_deg=margin_deg, distributed=True
        )(anchor, positive, R)
        loss.backward()
        # Unequal batch sizes across ranks: a clear error on every rank, not a hang.
        try:
            n = 3 - rank
            ContrastivePoseLoss(distributed=True)(anchor[:n], positive[:n], R[:n])
            size_error = ""
        except ValueError as e:
            size_error = str(e)
        np.savez(
            f"{out_dir}/rank{rank}.npz",
            loss=loss.item(),
            ga=anchor.grad.numpy(),
            gp=positive.grad.numpy(),
            size_error=size_error,
        )
    finally:
        torch.distributed.destroy_process_group()


def _run_two_ranks(tmp_path, inputs, margin_deg):
    import torch.multiprocessing as mp

    ctx = mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), inputs, str(tmp_path), margin_deg),
        nprocs=2,
        join=False,
    )
    deadline = time.monotonic() + 120.0
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the two gloo ranks did not finish within 120 s")
    return [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]


def test_distributed_two_ranks_use_the_global_batch_and_cross_rank_pose_mask(tmp_path):
    B, D, W = 3, 6, 2
    g = torch.Generator().manual_seed(7)
    R = far_apart_rotations(W * B, seed=7)
    R[B + 0] = small_turn(R[0], 2.0)  # rank 1's pair 0 is pose-near rank 0's pair 0
    anchor = torch.randn(W * B, D, generator=g, dtype=torch.float64)
    anchor[B + 0] = anchor[0] + 0.2 * torch.randn(D, generator=g, dtype=torch.float64)
    positive = anchor + 0.4 * torch.randn(W * B, D, generator=g, dtype=torch.float64)
    inputs = [
        (
            anchor[r * B : (r + 1) * B].numpy(),
            positive[r * B : (r + 1) * B].numpy(),
            R[r * B : (r + 1) * B],
        )
        for r in range(W)
    ]
    results = _run_two_ranks(tmp_path, inputs, margin_deg=5.0)

    # Expected: brute force on the concatenated global batch (pair labels unique across ranks).
    a = anchor.clone().requires_grad_()
    p = positive.clone().requires_grad_()
    global_batch = pair_batch(a, p, R)
    expected = circle_brute_force(*global_batch, margin_deg=5.0)
    expected.backward()
    unmasked = circle_brute_force(*pair_batch(anchor, positive, R), margin_deg=0.0).item()
    for r, res in enumerate(results):
        local = circle_brute_force(
            *pair_batch(*(torch.from_numpy(x) for x in inputs[r][:2]), inputs[r][2]),
            margin_deg=5.0,
        ).item()
        loss = float(res["loss"])
        assert loss == pytest.approx(expected.item(), rel=1e-10)
        assert abs(loss - local) > 1e-3  # negatives from the other rank count
        assert abs(loss - unmasked) > 1e-3  # the cross-rank pose-near pair is masked
        # DDP averages gradients over ranks: each rank's gradient is W times the global loss's
        # gradient through its own rows, so the average is the global gradient.
        sl = slice(r * B, (r + 1) * B)
        np.testing.assert_allclose(res["ga"], W * a.grad[sl].numpy(), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(res["gp"], W * p.grad[sl].numpy(), rtol=1e-8, atol=1e-12)
        assert "same batch size on every rank, got [3, 2]" in str(res["size_error"])


# --------------------------------------------------------------------------- geodesic loss


def test_geodesic_loss_value_matches_arccos_of_trace():
    A = Rotation.random(16, random_state=8).as_matrix()
    B = Rotation.random(16, random_state=9).as_matrix()
    expected = np.mean([_geodesic_arccos(x, y) for x, y in zip(A, B, strict=True)])
    got = geodesic_loss(torch.from_numpy(A), torch.from_numpy(B)).item()
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("angle_deg", [0.0, 180.0])
def test_geodesic_loss_gradient_finite_at_zero_and_pi(angle_deg):
    from clerf_ray import geometry

    R_true = torch.from_numpy(Rotation.random(4, random_state=10).as_matrix())
    turn = torch.from_numpy(Rotation.from_rotvec([0.0, 0.0, math.radians(angle_deg)]).as_matrix())
    target = R_true @ turn
    # Predictions through the 6D parametrisation, as the head makes them.
    x = geometry.matrix_to_rotation_6d(target).clone().requires_grad_()
    loss = geodesic_loss(geometry.rotation_6d_to_matrix(x), R_true)
    loss.backward()
    assert loss.item() == pytest.approx(math.radians(angle_deg), abs=1e-6)
    assert torch.isfinite(x.grad).all()


def test_geodesic_loss_gradient_descends():
    # Away from the kinks the gradient is the true one: a small step against it lowers the loss.
    from clerf_ray import geometry

    R_true = torch.from_numpy(Rotation.random(8, random_state=11).as_matrix())
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    x.requires_grad_()
    loss = geodesic_loss(geometry.rotation_6d_to_matrix(x), R_true)
    loss.backward()
    with torch.no_grad():
        after = geodesic_loss(geometry.rotation_6d_to_matrix(x - 1e-3 * x.grad), R_true)
    assert after.item() < loss.item()
