"""EG3D and PanoHead backends, driven by a stand-in generator (no checkout or weights here).

Every test builds a fake checkout in tmp_path (``training/``, ``torch_utils/``, ``dnnlib/``,
with ``training/standin_generator.py``), pickles ``{'G_ema': StandinGenerator(...)}`` and loads
it through the backends' real code path: checkout resolution, ``sys.path`` insertion and
unpickling. The stand-in projects coloured spheres through the camera it receives, so the
expected feature positions are computed here independently, from the label convention of
DESIGN.md (``R_cam = C R^T C``, pinhole projection), without the code under test.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import pickle
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clerf_ray.render import gan, make_renderer, renderer_class

STANDIN_SOURCE = Path(__file__).with_name("standin_generator.py")
RES = 96  # the stand-in's native resolution
Z_DIM = 16
FOCAL = 4.2647
RADIUS = 2.7
C = np.diag([1.0, -1.0, -1.0])
PIVOTS = {"eg3d": (0.0, 0.0, 0.2), "panohead": (0.0, 0.0, 0.0)}
# Stand-in features in world coordinates (y up, head facing +z); see standin_generator.py.
NOSE = np.array([0.0, -0.03, 0.28])
EYE_GREEN = np.array([0.1, 0.07, 0.22])  # world +x: the person's left eye
EYE_BLUE = np.array([-0.1, 0.07, 0.22])


# --------------------------------------------------------------------------- fake checkouts


def _location(module) -> str | None:
    path = getattr(module, "__file__", None)
    if path is None and getattr(module, "__path__", None) is not None:
        path = next(iter(module.__path__), None)
    return None if path is None else os.path.realpath(path)


def _forget(root: Path) -> None:
    """Remove every trace of a fake checkout from this (shared) test process."""
    root_s = os.path.realpath(root)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p) != root_s]
    for name, module in list(sys.modules.items()):
        where = _location(module)
        if where is not None and (where == root_s or where.startswith(root_s + os.sep)):
            del sys.modules[name]
    for key in [k for k in gan._LOADED_CHECKOUTS if k == root_s or k.startswith(root_s + os.sep)]:
        del gan._LOADED_CHECKOUTS[key]
    importlib.invalidate_caches()


@pytest.fixture
def fake_checkout(tmp_path):
    """Factory: ``make(name, nested=None) -> (checkout, pkl)``; cleans sys.path/sys.modules."""
    roots: list[Path] = []

    def make(name: str = "ckpt", nested: str | None = None, **standin_kwargs):
        clone = tmp_path / name
        code = clone / nested if nested else clone
        for pkg in ("training", "torch_utils", "dnnlib"):
            (code / pkg).mkdir(parents=True)
            (code / pkg / "__init__.py").write_text("")
        shutil.copy(STANDIN_SOURCE, code / "training" / "standin_generator.py")
        roots.append(clone)
        # Pickle the class as imported from the fake checkout (module training.standin_generator),
        # then forget it, so the backend must put the checkout on sys.path to unpickle it.
        sys.path.insert(0, str(code))
        try:
            module = importlib.import_module("training.standin_generator")
            G = module.StandinGenerator(z_dim=Z_DIM, img_resolution=RES, **standin_kwargs)
            pkl = tmp_path / f"{name}.pkl"
            with open(pkl, "wb") as f:
                pickle.dump({"G": G, "G_ema": G}, f)
        finally:
            _forget(clone)
        return clone, pkl

    yield make
    for root in roots:
        _forget(root)


def _label(pitch=0.0, yaw=0.0, roll=0.0) -> np.ndarray:
    """R = Rz(roll) Ry(yaw) Rx(pitch), degrees in, written out here (not from geometry)."""
    p, y, r = np.radians([pitch, yaw, roll])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def _expected_pixel(point_world, R, pivot, size):
    """Where the head point lands for label R: the head turns by R_cam = C R^T C about the pivot
    in front of a camera at distance RADIUS; pinhole projection, pixel centres at i + 0.5."""
    R_cam = C @ R.T @ C
    p = R_cam @ (C @ (np.asarray(point_world) - np.asarray(pivot))) + np.array([0, 0, RADIUS])
    return np.array([FOCAL * p[0] / p[2] + 0.5, FOCAL * p[1] / p[2] + 0.5]) * size


def _centroid(image, colour):
    """(x, y) centroid, in pixel-centre coordinates, of the pixels of one pure feature colour."""
    img = image.astype(int)
    hi = img[..., "rgb".index(colour)] > 180
    lo = np.delete(img, "rgb".index(colour), axis=-1).max(-1) < 90
    ys, xs = np.nonzero(hi & lo)
    if len(xs) == 0:
        return None
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def _frontal_c(pivot):
    """The frontal camera written out: camera axes (x, -y, -z) at pivot + (0, 0, RADIUS)."""
    px, py, pz = pivot
    return np.array(
        [1, 0, 0, px, 0, -1, 0, py, 0, 0, -1, pz + RADIUS, 0, 0, 0, 1]
        + [FOCAL, 0, 0.5, 0, FOCAL, 0.5, 0, 0, 1],
        dtype=np.float32,
    )


def _calls(renderer, fn):
    return [c for c in renderer.G.calls if c["fn"] == fn]


def _joined(renderer, fn):
    """The stand-in's recorded calls of ``fn``, tensors concatenated over calls (the samples in
    render order), other arguments as the list of their values."""
    calls = _calls(renderer, fn)
    return {
        k: torch.cat([c[k] for c in calls])
        if isinstance(calls[0][k], torch.Tensor)
        else [c[k] for c in calls]
        for k in calls[0]
    }


# --------------------------------------------------------------------------- tests


def test_standin_registered_pose_ranges():
    eg3d, pano = renderer_class("eg3d"), renderer_class("panohead")
    assert (eg3d.pose_range.yaw, eg3d.pose_range.pitch) == ((-90.0, 90.0), (-45.0, 45.0))
    assert (pano.pose_range.yaw, pano.pose_range.pitch) == ((-180.0, 180.0), (-60.0, 60.0))


def test_standin_pickle_needs_the_checkout_on_sys_path(fake_checkout):
    checkout, pkl = fake_checkout()
    # Without the checkout importable the pickle cannot be read: the backend must add it.
    with open(pkl, "rb") as f, pytest.raises(ModuleNotFoundError):
        pickle.load(f)
    r = make_renderer("eg3d", checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    assert str(os.path.realpath(checkout)) in sys.path
    assert type(r.G).__module__ == "training.standin_generator"
    assert sys.modules["training"].__file__.startswith(os.path.realpath(checkout))


def test_standin_output_dtype_shape_range(fake_checkout):
    checkout, pkl = fake_checkout()
    r = make_renderer("eg3d", checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    R = np.stack([_label(), _label(yaw=40, pitch=-10), _label(roll=150)])
    out = r.render(np.array([0, 1, 2]), R)
    assert out.dtype == np.uint8 and out.shape == (3, RES, RES, 3)
    # Background -0.8 -> 25.5, pure red nose -> 255: the [-1, 1] -> [0, 255] mapping.
    assert abs(np.median(out[:, :4, :4].astype(float)) - 25.5) <= 5
    assert out[0][..., 0].max() >= 250
    assert r.render(np.zeros(0, np.int64), np.zeros((0, 3, 3))).shape == (0, RES, RES, 3)


def test_standin_latents_and_frontal_conditioning(fake_checkout):
    checkout, pkl = fake_checkout()
    for backend in ("eg3d", "panohead"):
        _forget(checkout)  # as in a fresh process: one backend per process
        pivot = PIVOTS[backend]
        r = make_renderer(
            backend, checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu",
            truncation_psi=0.6, truncation_cutoff=3,
        )  # fmt: skip
        ids = np.array([11, 4242])
        r.render(ids, np.stack([_label(yaw=30), _label(pitch=20)]))
        # The default batch_size=1 renders each sample in its own call.
        assert len(_calls(r, "mapping")) == len(_calls(r, "synthesis")) == 2
        m, s = _joined(r, "mapping"), _joined(r, "synthesis")
        for i, seed in enumerate(ids):
            z = np.random.RandomState(seed).randn(Z_DIM)
            np.testing.assert_allclose(m["z"][i].numpy(), z, rtol=1e-6)
            # The mapping sees the frontal camera whatever the pose: identity stays put.
            np.testing.assert_allclose(m["c"][i].numpy(), _frontal_c(pivot), atol=1e-6)
        assert m["truncation_psi"] == [0.6, 0.6] and m["truncation_cutoff"] == [3, 3]
        assert s["noise_mode"] == ["const", "const"]
        # Target cameras, written out: yaw +30 puts the camera toward world +x (the nose then
        # points to the image's left); pitch +20 puts it below the face, looking up.
        t, u = np.radians(30), np.radians(20)
        pos_yaw = np.array(pivot) + RADIUS * np.array([np.sin(t), 0, np.cos(t)])
        rot_yaw = np.array([[np.cos(t), 0, -np.sin(t)], [0, -1, 0], [-np.sin(t), 0, -np.cos(t)]])
        pos_pitch = np.array(pivot) + RADIUS * np.array([0, -np.sin(u), np.cos(u)])
        # Columns: camera x, y (down, perpendicular to the view), z (toward the pivot).
        rot_pitch = np.stack(
            [[1, 0, 0], [0, -np.cos(u), -np.sin(u)], [0, np.sin(u), -np.cos(u)]], axis=1
        )
        for c, pos, rot in ((s["c"][0], pos_yaw, rot_yaw), (s["c"][1], pos_pitch, rot_pitch)):
            M = c[:16].numpy().reshape(4, 4)
            np.testing.assert_allclose(M[:3, 3], pos, atol=1e-5)
            np.testing.assert_allclose(M[:3, :3], rot, atol=1e-6)
            np.testing.assert_allclose(M[3], [0, 0, 0, 1], atol=0)
            np.testing.assert_allclose(c[16:].numpy(), _frontal_c(pivot)[16:], atol=1e-6)


def test_standin_identity_determinism(fake_checkout):
    checkout, pkl = fake_checkout()
    r = make_renderer("eg3d", checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    ids = np.array([3, 8, 3])
    R = np.stack([_label(yaw=20), _label(pitch=-15, roll=30), _label(yaw=-35)])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = r.render(ids, R)
    # The caller's random state is untouched, and a different one changes nothing.
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    b = r.render(ids, R)
    np.testing.assert_array_equal(a, b)
    # A second renderer of the same pickle renders the same people.
    r2 = make_renderer("eg3d", checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    np.testing.assert_array_equal(r2.render(ids, R), a)
    # The stand-in draws from torch's global generator during synthesis (as EG3D's ray sampler
    # does), so the equalities above could fail: under two seeds its output differs.
    c = torch.as_tensor(_frontal_c(PIVOTS["eg3d"]))[None]
    ws = r.G.mapping(torch.ones(1, Z_DIM), c)
    torch.manual_seed(1)
    x = r.G.synthesis(ws, c)["image"]
    torch.manual_seed(2)
    assert not torch.equal(x, r.G.synthesis(ws, c)["image"])
    # Identity shows in the head colour: seeds 3 and 8 differ, seed 3 keeps its colour across poses.
    centre = (slice(RES // 2 + 12, RES // 2 + 20), slice(RES // 2 - 4, RES // 2 + 4))
    face = r.render(ids, np.stack([_label()] * 3))
    colour = face[(slice(None), *centre)].reshape(3, -1, 3).mean(1)
    assert np.abs(colour[0] - colour[1]).max() > 10
    assert np.abs(colour[0] - colour[2]).max() < 3


def test_standin_image_independent_of_batch_neighbours_by_default(fake_checkout):
    """The renderer contract: an image depends on its identity and pose only. The same sample
    rendered alone, first in one batch and last in another batch with other neighbours gives the
    same pixels with the default options; an explicit batch_size > 1 (a speed option) gives that
    up, at the stand-in's jitter level."""
    checkout, pkl = fake_checkout()
    opts = dict(checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    target = (8, _label(pitch=-15, roll=30))
    ids_a = np.array([target[0], 3, 5])
    R_a = np.stack([target[1], _label(yaw=20), _label(yaw=-35)])
    ids_b = np.array([1, 2, 4, target[0]])
    R_b = np.stack([_label(), _label(pitch=10), _label(yaw=45, roll=-20), target[1]])

    r = make_renderer("eg3d", **opts)
    alone = r.render(ids_a[:1], R_a[:1])[0]
    in_a, in_b = r.render(ids_a, R_a)[0], r.render(ids_b, R_b)[3]
    np.testing.assert_array_equal(in_a, alone)
    np.testing.assert_array_equal(in_b, alone)

    r4 = make_renderer("eg3d", batch_size=4, **opts)
    a4, b4 = r4.render(ids_a, R_a)[0].astype(int), r4.render(ids_b, R_b)[3].astype(int)
    # Other chunk, other jitter: the pixels differ, but only at noise level (the jitter is
    # +-JITTER in [-1, 1] units, +-3.8 grey levels, before rounding and the roll resampling).
    noise = 2 * 0.03 * 127.5 + 2
    assert np.abs(a4 - b4).max() > 0
    assert np.abs(a4 - b4).max() <= noise
    assert np.abs(a4 - alone).max() <= noise


@pytest.mark.parametrize("backend", ["eg3d", "panohead"])
def test_standin_features_land_where_the_label_puts_them(fake_checkout, backend):
    checkout, pkl = fake_checkout()
    r = make_renderer(backend, checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    labels = [
        _label(),
        _label(yaw=30),
        _label(yaw=-45, pitch=15),
        _label(pitch=25),
        _label(roll=40),
        _label(yaw=20, pitch=-10, roll=-70),
        _label(yaw=-25, roll=160),
    ]
    R = np.stack(labels)
    assert r.pose_range.contains(R).all()
    out = r.render(np.arange(len(R)), R)
    for i, Ri in enumerate(R):
        for point, colour in ((NOSE, "r"), (EYE_GREEN, "g"), (EYE_BLUE, "b")):
            want = _expected_pixel(point, Ri, PIVOTS[backend], RES)
            got = _centroid(out[i], colour)
            assert got is not None, (i, colour)
            np.testing.assert_allclose(got, want, atol=1.0, err_msg=f"label {i} colour {colour}")
    # The direction of the conventions, stated plainly: yaw > 0 moves the nose to the left.
    assert _centroid(out[1], "r")[0] < _centroid(out[0], "r")[0] - 4
    # pitch > 0 (head up) moves the nose up the image.
    assert _centroid(out[3], "r")[1] < _centroid(out[0], "r")[1] - 5


def test_standin_panohead_renders_the_back_of_the_head(fake_checkout):
    checkout, pkl = fake_checkout()
    r = make_renderer("panohead", checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    out = r.render(np.array([1, 1]), np.stack([_label(), _label(yaw=180)]))
    assert _centroid(out[0], "r") is not None
    # Seen from behind, the head hides the nose and eyes.
    assert all(_centroid(out[1], c) is None for c in "rgb")
    cam = _joined(r, "synthesis")["c"][1].numpy()
    assert cam[11] < -2.0  # camera z: behind the head (world z < 0)


def test_standin_roll_sign(fake_checkout):
    checkout, pkl = fake_checkout()
    r = make_renderer("eg3d", checkout=checkout, network_pkl=pkl, image_size=RES, device="cpu")
    rolled, upright = r.render(np.array([5, 5]), np.stack([_label(roll=25), _label()]))
    # roll > 0: the eye line slopes down toward the image's right. The green eye (the person's
    # left) is on the image's right.
    g, b = _centroid(rolled, "g"), _centroid(rolled, "b")
    assert g[0] > b[0] and g[1] > b[1] + 3
    slope = np.degrees(np.arctan2(g[1] - b[1], g[0] - b[0]))
    assert abs(slope - 25) < 3
    # Same as turning the upright render clockwise by 25 deg (PIL: negative = clockwise).
    expect = np.asarray(Image.fromarray(upright).rotate(-25, resample=Image.BILINEAR))
    wrong = np.asarray(Image.fromarray(upright).rotate(25, resample=Image.BILINEAR))
    yy, xx = np.mgrid[:RES, :RES] + 0.5
    inner = (xx - RES / 2) ** 2 + (yy - RES / 2) ** 2 < (0.4 * RES) ** 2  # away from the corners
    err = np.abs(rolled.astype(float) - expect)[inner].mean()
    err_wrong = np.abs(rolled.astype(float) - wrong)[inner].mean()
    assert err < 3 and err_wrong > 4 * err


def test_standin_image_size_resize(fake_checkout):
    checkout, pkl = fake_checkout()
    opts = dict(checkout=checkout, network_pkl=pkl, device="cpu")
    ids, R = np.array([7, 9]), np.stack([_label(yaw=25), _label(pitch=-20)])
    native = make_renderer("eg3d", image_size=RES, **opts).render(ids, R)
    small = make_renderer("eg3d", image_size=32, **opts).render(ids, R)
    large = make_renderer("eg3d", image_size=128, **opts).render(ids, R)
    assert small.shape == (2, 32, 32, 3) and large.shape == (2, 128, 128, 3)
    for i in range(2):
        # PIL's antialiased bilinear resize of the native render, as an independent reference.
        for out, size in ((small, 32), (large, 128)):
            ref = np.asarray(Image.fromarray(native[i]).resize((size, size), Image.BILINEAR))
            assert np.abs(out[i].astype(int) - ref).max() <= 2
        # The nose keeps its relative place.
        np.testing.assert_allclose(
            _centroid(small[i], "r") / 32, _centroid(native[i], "r") / RES, atol=1 / 32
        )


@pytest.mark.parametrize(
    "backend, where", [("eg3d", "catalog.ngc.nvidia.com"), ("panohead", "SizheAn/PanoHead")]
)
def test_standin_missing_checkout_or_pickle_names_the_option(
    fake_checkout, tmp_path, backend, where
):
    checkout, pkl = fake_checkout()
    with pytest.raises(ValueError, match="checkout=") as e:
        make_renderer(backend, network_pkl=pkl)
    assert where in str(e.value)
    with pytest.raises(ValueError, match="checkout=.*not a directory"):
        make_renderer(backend, checkout=tmp_path / "nowhere", network_pkl=pkl)
    (tmp_path / "half" / "training").mkdir(parents=True)
    with pytest.raises(ValueError, match="checkout=.*lacks torch_utils/, dnnlib/"):
        make_renderer(backend, checkout=tmp_path / "half", network_pkl=pkl)
    path_before = list(sys.path)
    with pytest.raises(ValueError, match="network_pkl=") as e:
        make_renderer(backend, checkout=checkout)
    assert where in str(e.value)
    assert sys.path == path_before  # nothing imported for a renderer that cannot be built
    with pytest.raises(ValueError, match="network_pkl=.*does not exist"):
        make_renderer(backend, checkout=checkout, network_pkl=tmp_path / "missing.pkl")


class _MkdirOnUnpickle:
    """Unpickling this object creates the folder ``path``: a visible side effect that shows
    whether a pickle was ever unpickled (as a hostile network pickle would run its own code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("backend", ["eg3d", "panohead"])
def test_standin_network_sha256_match_loads(fake_checkout, backend):
    checkout, pkl = fake_checkout()
    opts = dict(checkout=checkout, network_pkl=pkl, image_size=32, device="cpu")
    digest = _sha256(pkl)
    r = make_renderer(backend, network_sha256=digest, **opts)
    assert r.network_sha256 == digest
    ids, R = np.array([1, 2]), np.stack([_label(yaw=15), _label(pitch=-10)])
    # The checked load renders what the unchecked one does; upper-case hex is the same hash.
    _forget(checkout)
    plain = make_renderer(backend, **opts).render(ids, R)
    _forget(checkout)
    upper = make_renderer(backend, network_sha256=digest.upper(), **opts)
    assert upper.network_sha256 == digest
    np.testing.assert_array_equal(r.render(ids, R), plain)
    np.testing.assert_array_equal(upper.render(ids, R), plain)


def test_standin_network_sha256_mismatch_refused_before_unpickling(fake_checkout, tmp_path):
    checkout, _ = fake_checkout()
    hostile, marker = tmp_path / "hostile.pkl", tmp_path / "unpickled"
    with open(hostile, "wb") as f:
        pickle.dump({"G_ema": _MkdirOnUnpickle(marker)}, f)
    opts = dict(checkout=checkout, network_pkl=hostile, device="cpu")
    wrong = hashlib.sha256(b"some other file").hexdigest()
    path_before = list(sys.path)
    with pytest.raises(ValueError, match="network_sha256") as e:
        make_renderer("eg3d", network_sha256=wrong, **opts)
    message = str(e.value)
    assert str(hostile) in message and wrong in message and _sha256(hostile) in message
    assert not marker.exists()  # refused before pickle.load ran
    assert sys.path == path_before
    # The marker does detect unpickling: with its right hash (or none) the file is unpickled,
    # and then refused for holding no generator.
    with pytest.raises(ValueError, match="G_ema"):
        make_renderer("eg3d", network_sha256=_sha256(hostile), **opts)
    assert marker.is_dir()


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        "0" * 63,
        "0" * 65,
        "g" * 64,
        " " + "0" * 64,
        "0" * 64 + "  network.pkl",  # a whole `sha256sum` line
        "sha256:" + "0" * 64,
        int("1" * 64),  # YAML reads an all-digit value as a number
        b"0" * 64,
    ],
)
def test_standin_malformed_network_sha256_fails_at_construction(fake_checkout, tmp_path, bad):
    checkout, _ = fake_checkout()
    hostile, marker = tmp_path / "hostile.pkl", tmp_path / "unpickled"
    with open(hostile, "wb") as f:
        pickle.dump({"G_ema": _MkdirOnUnpickle(marker)}, f)
    path_before = list(sys.path)
    with pytest.raises(ValueError, match="network_sha256 must be 64 hexadecimal characters"):
        make_renderer("eg3d", checkout=checkout, network_pkl=hostile, network_sha256=bad)
    assert not marker.exists() and sys.path == path_before
    # Checked with the other options, before the checkout and the pickle are looked at.
    with pytest.raises(ValueError, match="network_sha256"):
        make_renderer("panohead", network_sha256=bad)


def test_standin_pose_range_violations_rejected(fake_checkout):
    checkout, pkl = fake_checkout()
    eg3d = make_renderer("eg3d", checkout=checkout, network_pkl=pkl, image_size=32, device="cpu")
    for bad in (_label(yaw=100), _label(yaw=-120), _label(pitch=50)):
        with pytest.raises(ValueError, match="cannot render"):
            eg3d.render(np.array([0]), bad[None])
    # Roll never limits a backend: it is an image rotation.
    assert eg3d.render(np.array([0]), _label(yaw=80, roll=-179)[None]).shape == (1, 32, 32, 3)
    for bad_id in (-1, 2**32):
        with pytest.raises(ValueError, match="identity seeds"):
            eg3d.render(np.array([bad_id]), _label()[None])
    _forget(checkout)  # as in a fresh process: one backend per process
    pano = make_renderer(
        "panohead", checkout=checkout, network_pkl=pkl, image_size=32, device="cpu"
    )
    assert pano.render(np.array([0]), _label(yaw=170)[None]).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="cannot render"):
        pano.render(np.array([0]), _label(pitch=70)[None])


def test_standin_second_backend_in_one_process_is_refused(fake_checkout):
    a, pkl_a = fake_checkout("eg3d_clone", nested="eg3d")  # EG3D's layout: code in eg3d/eg3d
    b, pkl_b = fake_checkout("panohead_clone")
    r = make_renderer("eg3d", checkout=a, network_pkl=pkl_a, image_size=32, device="cpu")
    assert r.checkout == Path(os.path.realpath(a / "eg3d"))
    with pytest.raises(RuntimeError, match="already imported .*by the eg3d renderer.*separate"):
        make_renderer("panohead", checkout=b, network_pkl=pkl_b, device="cpu")
    with pytest.raises(RuntimeError, match="already imported"):
        make_renderer("eg3d", checkout=b, network_pkl=pkl_b, device="cpu")
    # The same checkout again is fine.
    make_renderer("eg3d", checkout=a, network_pkl=pkl_a, image_size=32, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standin_network_pkl_from_s3(fake_checkout, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    checkout, pkl = fake_checkout()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="weights")
        s3.upload_file(str(pkl), "weights", "gan/standin.pkl")
        opts = dict(checkout=checkout, image_size=48, device="cpu")
        from_s3 = make_renderer(
            "eg3d",
            network_pkl="s3://weights/gan/standin.pkl",
            storage_options={"endpoint_url": endpoint, "skip_instance_cache": True},
            **opts,
        )
        ids, R = np.array([1, 2]), np.stack([_label(yaw=10), _label(pitch=-30)])
        local = make_renderer("eg3d", network_pkl=pkl, **opts).render(ids, R)
        np.testing.assert_array_equal(from_s3.render(ids, R), local)
        # The hash of the uploaded file's bytes is checked on the object read from S3.
        s3_opts = {"endpoint_url": endpoint, "skip_instance_cache": True}
        checked = make_renderer(
            "eg3d",
            network_pkl="s3://weights/gan/standin.pkl",
            network_sha256=_sha256(pkl),
            storage_options=s3_opts,
            **opts,
        )
        np.testing.assert_array_equal(checked.render(ids, R), local)
        hostile, marker = pkl.with_name("hostile.pkl"), pkl.with_name("unpickled")
        with open(hostile, "wb") as f:
            pickle.dump({"G_ema": _MkdirOnUnpickle(marker)}, f)
        s3.upload_file(str(hostile), "weights", "gan/standin.pkl")  # replaced in the bucket
        with pytest.raises(
            ValueError, match="network_pkl='s3://weights/gan/standin.pkl' does not match"
        ) as e:
            make_renderer(
                "eg3d",
                network_pkl="s3://weights/gan/standin.pkl",
                network_sha256=_sha256(pkl),
                storage_options=s3_opts,
                **opts,
            )
        assert _sha256(hostile) in str(e.value) and not marker.exists()
        with pytest.raises(ValueError, match="network_pkl='s3://weights/nope.pkl' does not exist"):
            make_renderer(
                "eg3d",
                network_pkl="s3://weights/nope.pkl",
                storage_options={"endpoint_url": endpoint, "skip_instance_cache": True},
                **opts,
            )
    finally:
        server.stop()


def _rows(ds) -> dict[str, np.ndarray]:
    """All rows of a Ray dataset as numpy columns, ordered by ``pair_id``."""
    parts: dict[str, list] = {}
    for batch in ds.iter_batches(batch_size=4, batch_format="numpy"):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    rows = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(rows["pair_id"], kind="stable")
    return {k: v[order] for k, v in rows.items()}


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_standin_eg3d_inside_the_ray_pair_pipeline_actor(ray_cluster, fake_checkout, device):
    """The EG3D backend with the stand-in generator inside the pair pipeline's renderer actor
    (``RenderPairs`` in an ``ActorPoolStrategy`` stage) on the local Ray: the checkout goes on
    the actor's ``sys.path``, the pickle loads there, and the streamed images equal the renderer
    called directly in this process for the same identities and poses, although the actor
    renders them in other batches (the default ``batch_size=1``). On a GPU machine the cuda
    variant asks Ray for the GPU (``render_num_gpus=1``) and renders on it.

    Every stage has a fractional CPU budget: on 2 cores a whole-CPU stage starves the others."""
    from clerf_ray.config import PairDataConfig
    from clerf_ray.data.pairs import build_pair_dataset, render_pool

    checkout, pkl = fake_checkout()
    size = 32
    options = {"checkout": str(checkout), "network_pkl": str(pkl), "image_size": size}
    if device == "cpu":
        options["device"] = "cpu"  # on a GPU machine too: this variant stays on the CPU
    common = dict(
        renderer="eg3d",
        renderer_options=options,
        num_pairs=10,
        augment="none",
        seed=11,
        render_num_cpus=0.25,
        render_num_gpus=1 if device == "cuda" else 0,
        stage_num_cpus=0.1,
    )
    # The pool keeps the float64 labels the actor rendered at; the stream returns float32 ones.
    pool = _rows(render_pool(PairDataConfig.from_defaults(render_batch_size=4, **common)))
    assert len(pool["pair_id"]) == 10 and set(pool["source"]) == {"render:eg3d"}
    R = pool["R"].astype(np.float64).reshape(-1, 3, 3)

    # The renderer called directly, all pairs in one call (the actor had batches of 4).
    direct = make_renderer("eg3d", **options)
    anchors = direct.render(pool["identity_a"], R)
    positives = direct.render(pool["identity_b"], R)
    np.testing.assert_array_equal(pool["anchor"], anchors)
    np.testing.assert_array_equal(pool["positive"], positives)
    assert (pool["identity_a"] != pool["identity_b"]).all()
    assert np.abs(anchors.astype(int) - positives.astype(int)).mean() > 1  # two people

    # Streamed again, in batches of 3, without augmentation: the same pairs and labels.
    streamed = _rows(
        build_pair_dataset(PairDataConfig.from_defaults(render_batch_size=3, **common), epoch=0)
    )
    np.testing.assert_array_equal(streamed["pair_id"], pool["pair_id"])
    np.testing.assert_array_equal(streamed["anchor"], anchors)
    np.testing.assert_array_equal(streamed["positive"], positives)
    labels = streamed["R"].astype(np.float64)
    np.testing.assert_allclose(labels, R, atol=1e-6)

    # Every label inside EG3D's range (orbit yaw within +-90 deg, pitch within +-45 deg), from
    # geometry: the camera sits in direction d = R_cam^T (0, 0, -1) = C R[:, 2] of the head frame
    # (x right, y down, nose toward -z), so d = (sin y cos p, sin p, -cos y cos p) for orbit yaw y
    # and pitch p: |y| <= 90 deg iff R[2, 2] >= 0, |p| <= 45 deg iff |R[1, 2]| <= sin 45 deg.
    assert (labels[:, 2, 2] >= -1e-5).all()
    assert (np.abs(labels[:, 1, 2]) <= math.sin(math.radians(45)) + 1e-5).all()
