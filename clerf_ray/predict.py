"""``clerf predict``: head pose of face images with a registered model.

One JSON line per image on standard output::

    {"file": "a.jpg", "pitch": 3.1, "yaw": -40.2, "roll": 1.7, "R": [[...], [...], [...]]}

``pitch``, ``yaw``, ``roll`` are degrees in the dataset convention (``geometry.matrix_to_euler``
of ``R``: ``R = Rz(roll) Ry(yaw) Rx(pitch)``, yaw > 0 turns the nose toward the image's left);
``R`` is the 3x3 label, row-major nested lists. Inputs are face crops, or whole images with a
boxes file (``file -> x0, y0, x1, y1`` pixels, x1 and y1 exclusive; with one, an input without a
box fails rather than being taken for a crop). Files given one by one run
in this process; a directory or an ``s3://`` prefix goes through Ray Data batch inference
(``read_binary_files`` then ``map_batches`` with :class:`PosePredictor` actors). A file that
cannot be decoded is reported on standard error and skipped; the others go on. With ``--out``
the annotated images are named by :func:`out_names` (unique even for same-named inputs).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clerf_ray import geometry
from clerf_ray.images import resize_square

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------- inputs


def read_boxes(path: str) -> dict[str, tuple[int, int, int, int]]:
    """Face boxes from a JSON object ``{"file": [x0, y0, x1, y1], ...}`` or a CSV with rows
    ``file,x0,y0,x1,y1`` (a header row is allowed). Pixels, x1 and y1 exclusive.

    Raises:
        ValueError: the file is malformed (the message names it and the bad entry).
    """
    text = Path(path).read_text()
    boxes: dict[str, tuple[int, int, int, int]] = {}
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--boxes {path}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"--boxes {path}: expected an object mapping file -> [x0, y0, x1, y1]")
        items: Iterable = data.items()
    else:
        items = []
        for row in csv.reader(io.StringIO(text)):
            if not row or row[0].strip().lower() in ("file", "path", ""):
                continue
            items.append((row[0].strip(), row[1:]))
    for name, box in items:
        try:
            vals = tuple(int(round(float(v))) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"--boxes {path}: box of {name!r} is not 4 numbers: {box!r}") from None
        if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1]:
            raise ValueError(f"--boxes {path}: box of {name!r} must be x0, y0, x1 > x0, y1 > y0")
        boxes[str(name)] = vals
    return boxes


def box_for(file: str, boxes: dict[str, tuple[int, int, int, int]] | None):
    """The box of ``file``: looked up by the path as given, then by its base name."""
    if not boxes:
        return None
    if file in boxes:
        return boxes[file]
    name = file.rsplit("/", 1)[-1]
    return boxes.get(name)


def decode(data: bytes, file: str) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8 RGB. Raises ValueError naming ``file`` when not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError(f"{file}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{file}: not a readable image ({e})") from None


def crop(image: np.ndarray, box, file: str) -> np.ndarray:
    """The box (clipped to the image) of ``image``; ValueError when nothing is left."""
    if box is None:
        return image
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{file}: box {tuple(box)} lies outside the {w}x{h} image")
    return image[y0:y1, x0:x1]


def record(file: str, R: np.ndarray) -> dict[str, Any]:
    """The JSON record of one prediction (module docstring)."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    pitch, yaw, roll = (float(np.degrees(a)) for a in geometry.matrix_to_euler(R))
    return {"file": file, "pitch": pitch, "yaw": yaw, "roll": roll, "R": R.tolist()}


def annotate(image: np.ndarray, R: np.ndarray, box=None) -> np.ndarray:
    """The image with the pose axes drawn from the box centre (or the image centre)."""
    from clerf_ray.plots import draw_pose_axes

    if box is None:
        return draw_pose_axes(image, R)
    x0, y0, x1, y1 = box
    return draw_pose_axes(
        image,
        R,
        centre=((x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0),
        length=0.45 * min(x1 - x0, y1 - y0),
        width=max(1, int(round(min(x1 - x0, y1 - y0) / 60))),
    )


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _parts(file: str) -> list[str]:
    # Path components without a URL scheme or empty parts: "s3://b/x/a.jpg" -> [b, x, a.jpg].
    return [p for p in file.split("://", 1)[-1].split("/") if p and p != "."]


def out_names(files: list[str]) -> list[str]:
    """Output PNG names (``--out``) for inputs, one per file, all different.

    A file's name is its base name's stem with ``_pose.png`` (``dir/a.jpg`` -> ``a_pose.png``).
    Files whose names would clash take as many parent folders as tell them apart, joined by
    ``__`` (``x/a.jpg``, ``y/a.jpg`` -> ``x__a_pose.png``, ``y__a_pose.png``); then their full
    name with its extension (``a.jpg``, ``a.png`` -> ``a.jpg_pose.png``, ``a.png_pose.png``);
    a file given twice gets a counter (``a_pose-2.png``).
    """
    parts = [_parts(f) or [f] for f in files]
    depth = [1] * len(files)
    full = [False] * len(files)

    def candidate(i: int) -> str:
        p = parts[i][-depth[i] :]
        last = p[-1] if full[i] else Path(p[-1]).stem
        return "__".join([*p[:-1], last])

    while True:
        names = [candidate(i) for i in range(len(files))]
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(n, []).append(i)
        changed = False
        for members in groups.values():
            # The same path given twice is told apart by the counter below.
            if len({tuple(parts[i]) for i in members}) < 2:
                continue
            for i in members:
                if depth[i] < len(parts[i]):
                    depth[i] += 1
                    changed = True
                elif not full[i]:
                    full[i] = changed = True
        if not changed:
            break
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(f"{n}_pose.png" if seen[n] == 1 else f"{n}_pose-{seen[n]}.png")
    return out


# --------------------------------------------------------------------------- model transport


def model_files(model) -> dict[str, bytes]:
    """A model as the bytes of its saved files (``save_model``), to ship to Ray actors without
    pickling the module."""
    from clerf_ray.models import save_model

    with tempfile.TemporaryDirectory() as d:
        save_model(model, None, d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir()}


def model_from_files(files: dict[str, bytes]):
    from clerf_ray.models import load_model

    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            (Path(d) / name).write_bytes(data)
        return load_model(d)


class PosePredictor:
    """Ray Data callable class: a batch of ``{"path", "bytes"}`` rows -> one row per input with
    ``file``, ``R`` (9 floats, NaN when failed), ``error`` ("" when fine) and, when ``draw``,
    ``annotated`` (PNG bytes of the image with the axes drawn, else empty).

    Args:
        model: a ``PoseModel``, or its files as :func:`model_files` gives them (for actors).
        boxes: face boxes by file (:func:`read_boxes`); None: inputs are face crops. When
            given, every input is a whole image, and one without a box is an error row.
        draw: also return the annotated images.
        torch_threads: intra-op threads (actors: one per reserved CPU); None leaves torch's.
        use_gpu: move the model to the GPU Ray gave this actor (``num_gpus`` > 0).
    """

    def __init__(
        self,
        model,
        boxes: dict[str, tuple[int, int, int, int]] | None = None,
        draw: bool = False,
        torch_threads: int | None = 1,
        use_gpu: bool = False,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model = model_from_files(model) if isinstance(model, dict) else model
        if use_gpu:
            self.model = self.model.to("cuda")
        self.boxes = boxes
        self.draw = draw

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from clerf_ray.evaluate import predict

        files = [str(p) for p in batch["path"]]
        images, ok, errors, full = [], [], [""] * len(files), {}
        size = self.model.encoder.image_size
        for i, (file, data) in enumerate(zip(files, batch["bytes"], strict=True)):
            try:
                image = decode(bytes(data), file)
                box = box_for(file, self.boxes)
                if self.boxes is not None and box is None:
                    # With --boxes every input is a whole image: running the model on one as if
                    # it were a face crop would print a confident, meaningless pose.
                    raise ValueError(
                        f"{file}: no face box for it in --boxes (looked up as {file!r} and as "
                        f"{file.rsplit('/', 1)[-1]!r}); add one, or predict face crops without "
                        "--boxes"
                    )
                face = crop(image, box, file)
            except ValueError as e:
                errors[i] = str(e)
                continue
            # Faces of different sizes are stacked into one batch; the model resizes to the same size.
            images.append(resize_square(face, size))
            ok.append(i)
            if self.draw:
                full[i] = (image, box)
        R = np.full((len(files), 9), np.nan)
        if images:
            R[ok] = predict(self.model, np.stack(images)).reshape(-1, 9)
        annotated = [b""] * len(files)
        for i, (image, box) in full.items():
            annotated[i] = _png(annotate(image, R[i].reshape(3, 3), box))
        return {
            "file": np.asarray(files, dtype=object),
            "R": R,
            "error": np.asarray(errors, dtype=object),
            "annotated": np.asarray(annotated, dtype=object),
        }


# --------------------------------------------------------------------------- driver


def load_model_ref(ref: str):
    """``registry.load_registered(ref)``, with a way out when an alias is missing.

    Training registers new versions under the alias ``candidate`` only; ``champion`` (this
    command's default) exists once ``clerf promote`` has set it. So a missing alias of a model
    that exists is reported with its aliases and versions and the two ways on.

    Raises:
        LookupError: the model or alias is not in the registry (the message says what to do).
    """
    from clerf_ray import registry

    try:
        return registry.load_registered(ref)
    except LookupError as e:
        name, alias, _ = registry.parse_model_ref(ref)
        if alias is None:
            raise
        hint = _alias_hint(name, alias)
        if hint is None:
            raise
        raise LookupError(f"{e}\n{hint}") from None


def _alias_hint(name: str, alias: str) -> str | None:
    """What to do when model ``name`` exists without ``alias``; None when the model is absent."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
        versions = sorted(
            (int(v.version) for v in client.search_model_versions(f"name='{name}'")), reverse=True
        )
    except MlflowException:
        return None
    aliases = dict(model.aliases or {})
    have = ", ".join(f"{a} -> version {v}" for a, v in sorted(aliases.items())) or "none"
    latest = versions[0] if versions else "VERSION"
    other = "candidate" if "candidate" in aliases and alias != "candidate" else None
    lines = [
        f"{name} has no version with the alias {alias!r} (its aliases: {have}). "
        "Training sets only 'candidate'.",
        f"Run `clerf promote {name} {aliases.get('candidate', latest)}"
        + ("" if alias == "champion" else f" --alias {alias}")
        + f"` to point {alias!r} at a version",
    ]
    if other:
        lines[-1] += f", or pass --model {name}@{other}"
    else:
        lines[-1] += f", or pass --model {name}/{latest}"
    return "\n".join(lines) + "."


@dataclass
class Outcome:
    """One input's result: ``R`` (3, 3) or ``error``; ``annotated`` PNG bytes when drawn."""

    file: str
    R: np.ndarray | None
    error: str = ""
    annotated: bytes = b""


def is_batch_input(path: str) -> bool:
    """Directories and ``s3://`` (or other URL) prefixes go through Ray Data."""
    return "://" in path or Path(path).is_dir()


def predict_local(model, paths: list[str], boxes=None, draw: bool = False) -> list[Outcome]:
    """Predict files one by one in this process (the same code path as the Ray actors)."""
    datas, files, results = [], [], []
    for p in paths:
        try:
            datas.append(Path(p).read_bytes())
            files.append(p)
        except OSError as e:
            results.append(Outcome(p, None, f"{p}: cannot read ({e.strerror or e})"))
    if files:
        predictor = PosePredictor(model, boxes, draw, torch_threads=None)
        out = predictor({"path": np.asarray(files, dtype=object), "bytes": datas})
        results += _outcomes(out)
    return results


def _outcomes(out: dict[str, np.ndarray]) -> list[Outcome]:
    res = []
    for file, R, err, png in zip(
        out["file"], out["R"], out["error"], out["annotated"], strict=True
    ):
        if err:
            res.append(Outcome(str(file), None, str(err)))
        else:
            res.append(Outcome(str(file), np.asarray(R, dtype=np.float64).reshape(3, 3), "", png))
    return res


def predict_ray(
    model,
    prefix: str,
    boxes=None,
    draw: bool = False,
    batch_size: int = 64,
    num_actors: int = 1,
    num_cpus: float = 0.5,
    num_gpus: float = 0.0,
) -> list[Outcome]:
    """Batch inference over every file under a directory or ``s3://`` prefix with Ray Data.

    Files are read as bytes (``ray.data.read_binary_files``) so a file that is not an image
    becomes an error row rather than a failed read; :class:`PosePredictor` actors (``num_actors``,
    each ``num_cpus``, fractional on small machines, and ``num_gpus``) decode, crop and predict.
    """
    import ray.data

    ds = ray.data.read_binary_files(prefix, include_paths=True, num_cpus=0.25)
    ds = ds.map_batches(
        PosePredictor,
        fn_constructor_kwargs={
            "model": model_files(model),
            "boxes": boxes,
            "draw": draw,
            "use_gpu": num_gpus > 0,
        },
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )
    results = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        results += _outcomes(batch)
    # Blocks arrive in completion order; sort so the output does not depend on scheduling.
    return sorted(results, key=lambda r: r.file)


def list_inputs(paths: list[str]) -> tuple[list[str], list[str]]:
    """Split the command's arguments into single files and batch prefixes (directories, URLs)."""
    singles, prefixes = [], []
    for p in paths:
        (prefixes if is_batch_input(p) else singles).append(p)
    return singles, prefixes


def run_predict(
    model_ref: str,
    paths: list[str],
    *,
    out: str | None = None,
    boxes_path: str | None = None,
    tracking_uri: str | None = None,
    num_actors: int = 1,
    num_cpus: float = 0.5,
    num_gpus: float = 0.0,
    stdout=None,
    stderr=None,
) -> int:
    """The ``clerf predict`` command: JSON lines on ``stdout``, errors on ``stderr``.

    Returns:
        0 when every input was predicted, 1 when any failed (the others are still printed).
    """
    from clerf_ray import registry

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if not paths:
        print("clerf predict: give at least one image, directory or s3:// prefix", file=stderr)
        return 2
    boxes = read_boxes(boxes_path) if boxes_path else None
    registry.setup(tracking_uri)
    model = load_model_ref(model_ref)
    singles, prefixes = list_inputs(paths)
    results: list[Outcome] = []
    missing = [p for p in singles if not Path(p).exists()]
    for p in missing:
        results.append(Outcome(p, None, f"{p}: no such file"))
    results += predict_local(model, [p for p in singles if p not in missing], boxes, bool(out))
    if prefixes:
        from clerf_ray.ray_init import init_ray

        init_ray()
        for prefix in prefixes:
            results += predict_ray(
                model,
                prefix,
                boxes,
                bool(out),
                num_actors=num_actors,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
            )
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    names = out_names([r.file for r in results])
    failed = written = 0
    for r, name in zip(results, names, strict=True):
        if r.R is None:
            failed += 1
            print(f"clerf predict: {r.error}", file=stderr)
            continue
        print(json.dumps(record(r.file, r.R)), file=stdout, flush=True)
        if out and r.annotated:
            (Path(out) / name).write_bytes(r.annotated)
            written += 1
    if written:
        print(f"clerf predict: wrote {written} image(s) with the pose axes to {out}", file=stderr)
    if failed:
        print(f"clerf predict: {failed} of {len(results)} input(s) failed", file=stderr)
    return 1 if failed else 0
