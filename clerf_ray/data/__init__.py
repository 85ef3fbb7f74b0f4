"""Data on Ray: labelled sets (real datasets and renders) as Parquet shards, and pair streams.

* :mod:`clerf_ray.data.schema`: the one labelled-set schema, ``make_row`` / ``make_table``,
  ``load_labelled`` (pyarrow), ``read_labelled`` and ``read_labelled_numbered`` (Ray Data); the
  readers refuse shard sets of another schema.
* :mod:`clerf_ray.data.readers`: 300W-LP, AFLW2000 and BIWI readers and ``prepare_dataset``.
* :mod:`clerf_ray.data.crop`: the peers' loose landmark box and BIWI's head-centre box.
* :mod:`clerf_ray.data.shards`: atomic shard writing to a local folder or ``s3://``.
* :mod:`clerf_ray.data.pairs`: anchor-positive pair streams for pretraining.
* :mod:`clerf_ray.data.renders`: rendered labelled sets (``jobs/render.py --labelled``).

Submodules are imported on use, so ``import clerf_ray.data`` stays light.
"""
