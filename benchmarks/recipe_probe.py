"""Recipe probe: how well does a contrastive pretraining setting train the encoder, fast.

Trains the encoder in one process on a cached set of rendered pairs (fresh FA augmentation every
draw), then fits a pose head on cached embeddings of augmented training renders and reports the
geodesic error on renders of held-out identities over all of SO(3). No Ray: this isolates the
recipe (learning rate, Circle Loss m / gamma, batch, backbone, steps) from the pipeline, so
settings can be compared side by side in minutes. The README's table of tuning runs came from it.

    python benchmarks/recipe_probe.py --make-cache /tmp/pairs64.npz            # ~85 s, 2 cores
    python benchmarks/recipe_probe.py --cache /tmp/pairs64.npz --steps 300 --lr 3e-3
    python benchmarks/recipe_probe.py --cache /tmp/pairs64.npz --mode supervised --steps 300

Prints progress and one ``RESULT {json}`` line (settings, training seconds, probe medians).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from clerf_ray import geometry
from clerf_ray.augment import GeometricAugment
from clerf_ray.losses import ContrastivePoseLoss, geodesic_loss
from clerf_ray.models import PoseHead, create_encoder
from clerf_ray.render import make_renderer


def make_cache(path: str, size: int, pairs: int, heldout: int) -> None:
    """Pairs of training identities at uniform poses, plus held-out identities' renders."""
    torch.set_num_threads(1)
    renderer = make_renderer("procedural", image_size=size)
    rng = np.random.default_rng(0)
    R = geometry.sample_rotations(pairs, rng)
    ida, idb = rng.integers(0, 1_000_000, pairs), rng.integers(0, 1_000_000, pairs)

    def render(ids, rots):
        return np.concatenate(
            [renderer.render(ids[i : i + 256], rots[i : i + 256]) for i in range(0, len(ids), 256)]
        )

    Rt = geometry.sample_rotations(heldout, np.random.default_rng(99))
    idt = np.random.default_rng(98).integers(2_000_000, 2_100_000, heldout)
    np.savez(
        path,
        A=render(ida, R),
        B=render(idb, R),
        R=R.astype(np.float32),
        T=render(idt, Rt),
        Rt=Rt.astype(np.float32),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--make-cache", metavar="PATH", help="render the pair cache to PATH and exit")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--cache-pairs", type=int, default=16384)
    p.add_argument("--cache", default="/tmp/pairs64.npz")
    p.add_argument("--mode", choices=["contrastive", "supervised"], default="contrastive")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--m", type=float, default=0.25)
    p.add_argument("--gamma", type=float, default=64.0)
    p.add_argument("--negative-margin", type=float, default=5.0)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", type=int, default=0, help="use only the first N cached pairs")
    p.add_argument("--probe-samples", type=int, default=12000)
    p.add_argument("--probe-steps", type=int, default=3000)
    a = p.parse_args()
    if a.make_cache:
        t = time.time()
        make_cache(a.make_cache, a.image_size, a.cache_pairs, heldout=2000)
        print(f"cache written to {a.make_cache} in {time.time() - t:.0f}s")
        return

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = np.load(a.cache)
    A, B, R, T, Rt = d["A"], d["B"], d["R"], d["T"], d["Rt"]
    if a.pool:
        A, B, R = A[: a.pool], B[: a.pool], R[: a.pool]
    aug, rng = GeometricAugment.preset("fa"), np.random.default_rng(1)
    enc = create_encoder(backbone=a.backbone, embedding_dim=a.embedding_dim, image_size=A.shape[1])
    supervised = a.mode == "supervised"
    reg_head = PoseHead(in_dim=enc.num_features) if supervised else None
    params = list(enc.parameters()) + (list(reg_head.parameters()) if supervised else [])
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    warm = max(1, int(0.05 * a.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps))),
    )
    loss_fn = ContrastivePoseLoss(m=a.m, gamma=a.gamma, negative_margin_deg=a.negative_margin)

    def draw(idx, both: bool):
        xa, xb, labels = [], [], []
        for i in idx:
            ims, R2 = aug([A[i], B[i]] if both else [A[i]], R[i], rng)
            xa.append(ims[0])
            labels.append(R2)
            if both:
                xb.append(ims[1])
        labels = torch.tensor(np.stack(labels), dtype=torch.float32)
        return np.stack(xa), (np.stack(xb) if both else None), labels

    t0, t_data = time.time(), 0.0
    enc.train()
    for step in range(a.steps):
        td = time.time()
        xa, xb, labels = draw(rng.integers(0, len(A), a.batch), both=not supervised)
        t_data += time.time() - td
        if supervised:
            loss = geodesic_loss(reg_head(enc.features(enc.preprocess(xa))), labels)
        else:
            z = enc(enc.preprocess(np.concatenate([xa, xb])))
            loss = loss_fn(z[: a.batch], z[a.batch :], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == a.steps - 1:
            print(
                f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s (data {t_data:.0f}s)"
            )
    result = {"settings": vars(a), "train_s": time.time() - t0}

    enc.eval()

    def embed(x):
        with torch.no_grad():
            out = [
                enc(enc.preprocess(x[i : i + 256]), return_features=True)
                for i in range(0, len(x), 256)
            ]
        return torch.cat([f if supervised else z for z, f in out])

    if supervised:
        with torch.no_grad():
            pred = torch.cat([reg_head(f) for f in embed(T).split(256)])
        e = geometry.geodesic_error(pred.numpy(), Rt)
        result["supervised_median"] = float(np.median(e))
    # Probe: a head on cached embeddings of augmented training renders.
    xa, _, labels = draw(rng.integers(0, len(A), a.probe_samples), both=False)
    Z, Zt = embed(xa), embed(T)
    torch.manual_seed(0)
    head = PoseHead(in_dim=Z.shape[1])
    o = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    sc = torch.optim.lr_scheduler.CosineAnnealingLR(o, a.probe_steps)
    for _ in range(a.probe_steps):
        j = torch.randint(0, len(Z), (256,))
        loss = geodesic_loss(head(Z[j]), labels[j])
        o.zero_grad()
        loss.backward()
        o.step()
        sc.step()
    with torch.no_grad():
        e = geometry.geodesic_error(head(Zt).numpy(), Rt)
    result["probe_median"], result["probe_mean"] = float(np.median(e)), float(np.mean(e))
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
