"""What the processes that only plan or route the pair stream import.

Ray Data's split coordinator, Ray Train's dataset manager and Ray Data's tasks unpickle the
stream's plan; each is a fresh process, and importing torch costs it 2-4 s of CPU on this 2-core
machine (every Ray Train run starts several). Only the render actors and the training workers
need torch.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import cloudpickle

from clerf_ray.config import load_config
from clerf_ray.data.render_stage import RendererFactory
from clerf_ray.render import renderer_class
from clerf_ray.render.procedural import ProceduralRenderer


def _fresh_python(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_unpickling_a_live_render_stream_does_not_import_torch(ray_cluster, tmp_path):
    from clerf_ray.data.pairs import pretrain_inputs

    cfg = load_config(None, ["data.image_size=32", "data.num_pairs=16"])
    datasets, _ = pretrain_inputs(cfg.data.pair_config(seed=0), epochs=1)
    # A live epoch is a function that builds its dataset; Ray Train's controller calls it, then
    # sends the dataset to its dataset manager, which starts the split coordinator with it.
    epoch = datasets["epoch_0"]
    blob = tmp_path / "plan.pkl"
    blob.write_bytes(cloudpickle.dumps(epoch() if callable(epoch) else epoch))
    out = _fresh_python(
        f"""
        import pickle, sys
        ds = pickle.loads(open({str(blob)!r}, "rb").read())
        print(type(ds).__name__, "torch" in sys.modules)
        """
    )
    assert out.split() == ["Dataset", "False"]


def test_importing_the_render_package_does_not_import_torch_until_a_lookup():
    out = _fresh_python(
        """
        import sys
        import clerf_ray.render as render
        before = "torch" in sys.modules
        names = render.list_renderers()
        print(before, "torch" in sys.modules, ",".join(names))
        """
    )
    assert out.split() == ["False", "True", "eg3d,panohead,procedural"]


def test_renderer_factory_carries_an_importable_class_by_name_and_builds_it():
    factory = RendererFactory(renderer_class("procedural"))
    assert factory.ref == ("clerf_ray.render.procedural", "ProceduralRenderer")
    # By name: the pickle holds no class object (loading it imports nothing of the backend)...
    out = _fresh_python(
        f"""
        import pickle, sys
        f = pickle.loads({pickle.dumps(factory)!r})
        print(f.ref, f.cls, "clerf_ray.render.procedural" in sys.modules, "torch" in sys.modules)
        r = f(image_size=24)
        print(type(r).__module__, type(r).__name__, r.image_size)
        """
    )
    first, second = out.strip().splitlines()
    assert first == "('clerf_ray.render.procedural', 'ProceduralRenderer') None False False"
    # ...and calling it imports the backend and builds the renderer with the options.
    assert second == "clerf_ray.render.procedural ProceduralRenderer 24"


def test_renderer_factory_carries_a_class_defined_in_a_function_by_value():
    def make():
        class Small(ProceduralRenderer):
            pass

        return Small

    Small = make()
    factory = RendererFactory(Small)
    assert factory.ref is None and factory.cls is Small
    copy = pickle.loads(cloudpickle.dumps(factory))
    built = copy(image_size=16)
    assert type(built).__name__ == "Small" and isinstance(built, ProceduralRenderer)
    assert built.image_size == 16


def test_renderer_factory_carries_a_scripts_own_class_by_value(tmp_path):
    """A class defined in a script (its ``__main__``) is importable by name there but not in the
    actors, whose ``__main__`` is Ray's worker: it goes by value."""
    out = _fresh_python(
        """
        import pickle

        import cloudpickle

        from clerf_ray.data.render_stage import RendererFactory
        from clerf_ray.render.procedural import ProceduralRenderer

        class Scripted(ProceduralRenderer):
            pass

        f = RendererFactory(Scripted)
        print(f.ref, f.cls is Scripted)
        blob = cloudpickle.dumps(f)
        del Scripted  # gone from this __main__, as it is from an actor's
        print(type(pickle.loads(blob)(image_size=8)).__name__)
        """
    )
    assert out.split() == ["None", "True", "Scripted"]
