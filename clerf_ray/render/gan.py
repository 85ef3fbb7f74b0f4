"""Shared adapter for 3D-aware GAN backends (EG3D, PanoHead) loaded from the user's checkout.

Both generators follow the same calling convention (NVlabs' StyleGAN family):

* ``G = pickle.load(f)['G_ema']`` with the checkout's ``torch_utils`` and ``dnnlib`` importable
  (the network classes come from the pickle's embedded source, which imports ``training.*``);
* ``ws = G.mapping(z, c_cond, truncation_psi=..., truncation_cutoff=...)`` with ``z`` (N, z_dim);
* ``G.synthesis(ws, c, noise_mode='const')['image']``: (N, 3, H, W) float in [-1, 1];
* ``c`` (N, 25): a flattened 4x4 cam2world matrix (OpenCV camera axes, y-up world) and flattened
  3x3 intrinsics normalised by image size (``geometry.camera_from_pose``).

EG3D (NVIDIA Source Code License) and PanoHead (CC BY-NC-SA 4.0) are licensed for non-commercial
use only. Nothing of theirs is copied here: their modules are imported by name from the checkout
the user names, and their weights are read from the pickle the user names.

The two checkouts define the same top-level modules (``training``, ``torch_utils``, ``dnnlib``,
``legacy``, ``camera_utils``) with different contents, so a process can hold only one of them;
a second backend or a second checkout in the same process is refused with an error. Run each in
its own process (for example its own Ray actor).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch

from clerf_ray import augment, geometry
from clerf_ray.render.base import Renderer

# Top-level module names that EG3D and PanoHead checkouts both define: importing either backend
# puts them in sys.modules, where the other backend's code would silently pick up the wrong ones.
SHARED_MODULE_NAMES = ("training", "torch_utils", "dnnlib", "legacy", "camera_utils")
_REQUIRED_DIRS = ("training", "torch_utils", "dnnlib")

# Resolved checkout root -> backend name, for error messages about clashes.
_LOADED_CHECKOUTS: dict[str, str] = {}

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Read size while hashing: network pickles are hundreds of MB, so they are streamed, never held
# in memory whole for the check.
_HASH_CHUNK = 1 << 20


def _module_location(module) -> str | None:
    """The file or package folder a module was imported from (None for namespace oddities)."""
    path = getattr(module, "__file__", None)
    if path is None:
        search = getattr(module, "__path__", None)
        path = next(iter(search), None) if search is not None else None
    return None if path is None else os.path.realpath(path)


def _is_inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def resolve_checkout(checkout: str | os.PathLike | None, backend: str, weights_hint: str) -> Path:
    """The folder of a checkout that holds ``training/``, ``torch_utils/`` and ``dnnlib/``.

    Accepts that folder itself or a clone whose subfolder named after the backend holds them
    (EG3D's clone keeps its code in ``eg3d/eg3d``).

    Raises:
        ValueError: ``checkout`` is unset, missing, or lacks the packages; the message names the
            ``checkout=`` option and where the code and weights are published.
    """
    if checkout is None or str(checkout) == "":
        raise ValueError(
            f"{backend} renderer needs checkout=PATH: a local clone of the {backend} code (its "
            f"folder holding training/, torch_utils/, dnnlib/). {weights_hint}"
        )
    given = Path(checkout).expanduser()
    if not given.is_dir():
        raise ValueError(
            f"{backend} renderer: checkout={str(checkout)!r} is not a directory. {weights_hint}"
        )
    for root in (given, given / backend):
        if all((root / d).is_dir() for d in _REQUIRED_DIRS):
            return Path(os.path.realpath(root))
    missing = [d for d in _REQUIRED_DIRS if not (given / d).is_dir()]
    raise ValueError(
        f"{backend} renderer: checkout={str(checkout)!r} lacks {', '.join(d + '/' for d in missing)} "
        f"(also looked in {str(given / backend)!r}); point checkout= at the folder of your "
        f"{backend} clone that holds training/, torch_utils/ and dnnlib/. {weights_hint}"
    )


def import_checkout(root: Path, backend: str) -> bool:
    """Put a checkout on ``sys.path`` after making sure no other checkout's modules are loaded.

    Returns:
        Whether the checkout was added to ``sys.path`` (False: it was there already).

    Raises:
        RuntimeError: modules with the checkout's names are already imported from elsewhere (the
            other GAN backend, or another checkout of this one).
    """
    root_s = str(root)
    for name in SHARED_MODULE_NAMES:
        module = sys.modules.get(name)
        if module is None:
            continue
        where = _module_location(module)
        if where is not None and _is_inside(where, root_s):
            continue
        owner = next(
            (b for r, b in _LOADED_CHECKOUTS.items() if where and _is_inside(where, r)), None
        )
        by = f"by the {owner} renderer" if owner else "by other code"
        raise RuntimeError(
            f"{backend} renderer: the module {name!r} is already imported from {where} ({by}). "
            f"EG3D and PanoHead checkouts define the same module names "
            f"({', '.join(SHARED_MODULE_NAMES)}), so a process can use only one backend and one "
            f"checkout; build the {backend} renderer in a separate process (e.g. its own Ray actor)."
        )
    _LOADED_CHECKOUTS[root_s] = backend
    if root_s in sys.path:
        return False
    # First on the path, so that the checkout's packages win over any same-named ones.
    sys.path.insert(0, root_s)
    return True


def check_sha256(network_sha256: Any, backend: str) -> str | None:
    """The ``network_sha256`` option, validated: None, or 64 hex characters (lowercased).

    Raises:
        ValueError: anything else; the message names the option and what it expects.
    """
    if network_sha256 is None:
        return None
    if not isinstance(network_sha256, str) or not _SHA256_HEX.fullmatch(network_sha256):
        raise ValueError(
            f"{backend} renderer: network_sha256 must be 64 hexadecimal characters, the SHA-256 "
            f"of the network pickle's bytes (the first field of `sha256sum FILE`), got "
            f"{network_sha256!r}"
        )
    return network_sha256.lower()


def _verified_copy(
    url: str, storage_options: Mapping[str, Any], expected: str, backend: str
) -> IO[bytes]:
    """A local temporary copy of ``url``, open at its start, whose SHA-256 is ``expected``.

    The bytes are hashed as they are copied, and the copy is what gets unpickled afterwards: the
    file that passed the check is the file loaded, even if the original (an S3 object, say) is
    replaced in between, and a remote pickle is downloaded once.

    Raises:
        ValueError: the hashes differ; nothing has been unpickled.
    """
    import fsspec

    digest = hashlib.sha256()
    copy = tempfile.TemporaryFile()
    try:
        with fsspec.open(url, "rb", **dict(storage_options)) as src:
            while chunk := src.read(_HASH_CHUNK):
                digest.update(chunk)
                copy.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise ValueError(
                f"{backend} renderer: network_pkl={url!r} does not match network_sha256: "
                f"expected {expected}, got {actual} (SHA-256 of the file's bytes). The pickle was "
                "not loaded; a network pickle runs code when unpickled, so fetch it again from "
                "its publisher, or set network_sha256 to the hash of a file you trust."
            )
        copy.seek(0)
        return copy
    except BaseException:
        copy.close()
        raise


def load_generator(
    network_pkl: str | os.PathLike | None,
    backend: str,
    weights_hint: str,
    storage_options: Mapping[str, Any] | None = None,
    network_sha256: str | None = None,
) -> torch.nn.Module:
    """Unpickle ``['G_ema']`` from a local path or any fsspec URL (``s3://...``).

    The checkout must already be importable (:func:`import_checkout`). A network pickle runs code
    when loaded: only load pickles you trust. With ``network_sha256`` the file's bytes are hashed
    before anything is unpickled, and a file with another hash is refused. Both projects document
    plain ``pickle.load(f)['G_ema']``; their ``legacy.load_network_pkl`` adds only a converter for
    TensorFlow-era StyleGAN pickles, which neither publishes.

    Raises:
        ValueError: ``network_pkl`` is unset, does not exist, does not match ``network_sha256``,
            or holds no ``'G_ema'``; ``network_sha256`` is not 64 hex characters.
    """
    expected = check_sha256(network_sha256, backend)
    if network_pkl is None or str(network_pkl) == "":
        raise ValueError(
            f"{backend} renderer needs network_pkl=PATH_OR_URL: the generator's network pickle "
            f"(local path or s3://...). {weights_hint}"
        )
    import fsspec

    url = os.fspath(network_pkl)
    options = dict(storage_options or {})
    try:
        if expected is None:
            with fsspec.open(url, "rb", **options) as f:
                data = pickle.load(f)
        else:
            with _verified_copy(url, options, expected, backend) as f:
                data = pickle.load(f)
    except FileNotFoundError as e:
        raise ValueError(
            f"{backend} renderer: network_pkl={url!r} does not exist ({e}). {weights_hint}"
        ) from e
    except ModuleNotFoundError as e:
        # The pickle's classes import modules the checkout lacks: usually a pickle of the other
        # backend, or a checkout of a different project.
        raise ValueError(
            f"{backend} renderer: network_pkl={url!r} needs the module {e.name!r}, which the "
            f"checkout does not provide; are network_pkl= and checkout= both {backend}'s?"
        ) from e
    if not isinstance(data, dict) or "G_ema" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{backend} renderer: network_pkl={url!r} holds no 'G_ema' generator (found {keys})"
        )
    if not isinstance(data["G_ema"], torch.nn.Module):
        raise ValueError(
            f"{backend} renderer: network_pkl={url!r} holds a 'G_ema' of type "
            f"{type(data['G_ema']).__name__}, not a torch module"
        )
    return data["G_ema"]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def chunk_seed(identities: np.ndarray, c: np.ndarray) -> int:
    """A 63-bit seed fixed by the identities (N,) and cameras (N, 25) of one synthesis call."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.ascontiguousarray(identities, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(c, dtype="<f4").tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


class GanRenderer(Renderer):
    """Renders identity seeds with a 3D-aware GAN at any pose of its ``pose_range``.

    For label ``R`` the camera orbits the head to the label's orbit yaw and pitch
    (``geometry.camera_from_pose``), and the in-plane part ``roll`` is applied to the rendered
    image as a rotation by ``-degrees(roll)`` counterclockwise. The mapping network is conditioned
    on the frontal camera so that an identity keeps its look across poses; synthesis uses the
    target camera. The latent of identity ``s`` is ``np.random.RandomState(s).randn(z_dim)``, as
    in the projects' own generation scripts, so seed ``s`` is the same person there and here.

    Determinism: EG3D's volume renderer jitters its ray samples with torch's global random
    generator even with ``noise_mode='const'``. Each synthesis call runs inside
    ``torch.random.fork_rng`` seeded from its identities and cameras, so the caller's random state
    is untouched. The jitter is drawn for the whole call at once; with the default
    ``batch_size=1`` every call renders one sample, so an image is a function of its own identity
    and pose only, as the renderer contract requires, whatever batches the caller (a Ray Data
    pipeline, say) groups it into. ``batch_size > 1`` is a speed option that gives this up.

    Subclasses set ``name``, ``pose_range``, ``default_pivot`` and ``weights_hint``.

    Args:
        checkout: local clone of the backend's code; the folder holding ``training/``,
            ``torch_utils/`` and ``dnnlib/`` (or its parent) goes on ``sys.path``.
        network_pkl: network pickle, a local path or an fsspec URL such as ``s3://bucket/x.pkl``.
        image_size: side of the output images in pixels; the generator's output is resized
            (antialiased bilinear) when it differs.
        truncation_psi: truncation toward the average latent (1 = none; 0.7 is the projects'
            usual setting for clean samples).
        truncation_cutoff: number of layers truncated (``None``: all), as in the projects' scripts.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.
        batch_size: samples per synthesis call. The default 1 keeps images deterministic per
            identity and pose. Larger values render faster on a GPU, but the ray jitter is then
            seeded and drawn per chunk of ``batch_size`` consecutive samples, so an image also
            depends, at noise level, on its chunk neighbours (the same image can differ slightly
            when rendered in another batch or at another place in the batch).
        radius: camera distance from the pivot, in the generator's world units.
        pivot: world point the camera orbits and looks at; default the backend's.
        focal: focal length normalised by image size (FFHQ cameras: 4.2647).
        storage_options: fsspec options for opening ``network_pkl`` (e.g. ``{"endpoint_url":
            ...}`` for an S3-compatible store; credentials otherwise come from the environment).
        network_sha256: SHA-256 of the pickle file's bytes, 64 hex characters (``sha256sum
            FILE``). A network pickle runs code when it is loaded; with this set, the file is
            hashed first and refused unless it matches, before anything is unpickled. Checked
            for its form at construction. ``None``: no check.
    """

    name: ClassVar[str] = ""
    default_pivot: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)
    weights_hint: ClassVar[str] = ""

    def __init__(
        self,
        checkout: str | os.PathLike | None = None,
        network_pkl: str | os.PathLike | None = None,
        image_size: int = 64,
        truncation_psi: float = 0.7,
        truncation_cutoff: int | None = 14,
        device: str | torch.device | None = None,
        batch_size: int = 1,
        radius: float = 2.7,
        pivot: Sequence[float] | None = None,
        focal: float = geometry.FFHQ_FOCAL,
        storage_options: Mapping[str, Any] | None = None,
        network_sha256: str | None = None,
    ):
        # Check the cheap options before importing anything or reading weights.
        network_sha256 = check_sha256(network_sha256, self.name)
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 <= float(truncation_psi) <= 1.0:
            raise ValueError(f"truncation_psi must be in [0, 1], got {truncation_psi!r}")
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius!r}")
        if not focal > 0:
            raise ValueError(f"focal must be > 0, got {focal!r}")
        pivot = self.default_pivot if pivot is None else tuple(float(p) for p in pivot)
        if len(pivot) != 3:
            raise ValueError(f"pivot must be 3 numbers (x, y, z), got {pivot!r}")

        self.image_size = int(image_size)
        self.truncation_psi = float(truncation_psi)
        self.truncation_cutoff = truncation_cutoff
        self.batch_size = int(batch_size)
        self.radius = float(radius)
        self.pivot = pivot
        self.focal = float(focal)
        self.device = torch.device(device) if device is not None else _default_device()

        self.checkout = resolve_checkout(checkout, self.name, self.weights_hint)
        if network_pkl is None or str(network_pkl) == "":
            # Fail on the missing pickle before touching sys.path or sys.modules.
            load_generator(None, self.name, self.weights_hint)
        added = import_checkout(self.checkout, self.name)
        try:
            G = load_generator(
                network_pkl, self.name, self.weights_hint, storage_options, network_sha256
            )
        except Exception:
            if added:
                # Leave sys.path as it was for a renderer that could not be built.
                sys.path.remove(str(self.checkout))
            raise
        self.network_pkl = os.fspath(network_pkl)
        self.network_sha256 = network_sha256
        self.G = G.eval().requires_grad_(False).to(self.device)
        z_dim, c_dim = getattr(self.G, "z_dim", None), getattr(self.G, "c_dim", None)
        if z_dim is None or c_dim != 25:
            raise ValueError(
                f"{self.name} renderer: network_pkl={self.network_pkl!r} holds a generator with "
                f"z_dim={z_dim}, c_dim={c_dim}; expected a camera-conditioned 3D-aware generator "
                "(c_dim=25)"
            )
        self.z_dim = int(z_dim)
        c_front = geometry.frontal_camera(radius=self.radius, pivot=self.pivot, focal=self.focal)
        self._c_frontal = torch.as_tensor(c_front, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ rendering

    def latents(self, identities: np.ndarray) -> np.ndarray:
        """Latent codes (N, z_dim) float32 of identity seeds (N,), each in [0, 2**32)."""
        identities = np.asarray(identities, dtype=np.int64)
        bad = (identities < 0) | (identities >= 2**32)
        if bad.any():
            raise ValueError(
                f"{self.name} renderer: identity seeds must lie in [0, 2**32) (numpy RandomState "
                f"seeds), got {int(identities[np.flatnonzero(bad)[0]])}"
            )
        z = np.stack([np.random.RandomState(int(s)).randn(self.z_dim) for s in identities])
        return z.astype(np.float32)

    def _fork_rng(self):
        """A context restoring torch's global random state afterwards (CPU and our GPU)."""
        if self.device.type == "cuda":
            index = (
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            )
            return torch.random.fork_rng(devices=[index])
        return torch.random.fork_rng(devices=[])

    def _seed(self, seed: int) -> None:
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(seed)

    @torch.no_grad()
    def _synthesize(self, identities: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Render one chunk without roll: (n, image_size, image_size, 3) uint8."""
        n = len(identities)
        z = torch.as_tensor(self.latents(identities), device=self.device)
        c_t = torch.as_tensor(np.asarray(c, dtype=np.float32), device=self.device)
        c_cond = self._c_frontal.expand(n, -1)
        with self._fork_rng():
            self._seed(chunk_seed(identities, c))
            ws = self.G.mapping(
                z,
                c_cond,
                truncation_psi=self.truncation_psi,
                truncation_cutoff=self.truncation_cutoff,
            )
            img = self.G.synthesis(ws, c_t, noise_mode="const")["image"]
        img = img.float()
        if img.shape[-2:] != (self.image_size, self.image_size):
            img = torch.nn.functional.interpolate(
                img,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        # [-1, 1] -> [0, 255], rounding to nearest.
        img = ((img + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return img.permute(0, 2, 3, 1).cpu().numpy()

    def render(self, identities: np.ndarray, R: np.ndarray) -> np.ndarray:
        """Render identity ``identities[i]`` at label ``R[i]``.

        Args:
            identities: (N,) identity seeds in [0, 2**32).
            R: (N, 3, 3) labels (``geometry`` convention) inside ``pose_range``.

        Returns:
            (N, image_size, image_size, 3) uint8.
        """
        identities, R = self.check_inputs(identities, R)
        n = len(identities)
        out = np.empty((n, self.image_size, self.image_size, 3), dtype=np.uint8)
        if n == 0:
            return out
        c, roll = geometry.camera_from_pose(
            R, radius=self.radius, pivot=self.pivot, focal=self.focal
        )
        roll_deg = np.degrees(np.asarray(roll, dtype=np.float64))
        for start in range(0, n, self.batch_size):
            sl = slice(start, start + self.batch_size)
            out[sl] = self._synthesize(identities[sl], c[sl])
        eye = np.eye(3)
        for i in range(n):
            # camera_from_pose returns the clockwise in-plane angle; undo it counterclockwise.
            # Angles of float noise are skipped: a resampling would only blur.
            if abs(roll_deg[i]) > 1e-6:
                out[i] = augment.rotate(out[i], eye, -roll_deg[i])[0]
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(checkout={str(self.checkout)!r}, "
            f"network_pkl={self.network_pkl!r}, image_size={self.image_size}, "
            f"truncation_psi={self.truncation_psi}, device={str(self.device)!r})"
        )
