"""Labelled shards on S3: a real S3 API server (moto in server mode) on loopback, not a mock of the
client. Credentials and endpoint reach pyarrow through the standard AWS environment variables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clerf_ray.data.readers import prepare_dataset
from clerf_ray.data.schema import load_labelled, read_labelled
from clerf_ray.data.shards import ShardWriter, read_report

from .fixtures import AFLW2000_POSES, build_aflw2000

BUCKET = "clerf-test"


@pytest.fixture(scope="module")
def s3_env(s3):
    """The session's S3 server (``tests/conftest.py``), with this module's bucket; yields the AWS
    variables it runs under."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    _ENDPOINT[:] = [s3["endpoint"]]
    return s3["env"]


_ENDPOINT: list[str] = []


def _keys(prefix: str) -> list[str]:
    """Object keys under a prefix, listed with boto3 (independent of pyarrow), minus the empty
    folder markers some clients create."""
    import boto3

    client = boto3.client("s3", endpoint_url=_ENDPOINT[0])
    resp = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(
        o["Key"][len(prefix) :] for o in resp.get("Contents", []) if not o["Key"].endswith("/")
    )


@pytest.fixture(scope="module")
def aflw_source(tmp_path_factory) -> Path:
    return build_aflw2000(tmp_path_factory.mktemp("AFLW2000"))


def test_prepare_to_s3_and_read_back(s3_env, aflw_source):
    out = f"s3://{BUCKET}/aflw2000"
    report = prepare_dataset("aflw2000", aflw_source, out, filter_99=False, shard_rows=2, log=None)
    assert report["counts"]["written"] == 3
    assert _keys("aflw2000/") == ["_report.json", "part-00000.parquet", "part-00001.parquet"]
    assert read_report(out)["counts"] == report["counts"]

    table = load_labelled(out)
    rows = {r["file"]: r for r in table.to_pylist()}
    assert sorted(rows) == [f"{n}.jpg" for n in sorted(AFLW2000_POSES)]
    for name, (pitch, yaw, roll) in AFLW2000_POSES.items():
        expected = Rotation.from_euler("ZYX", [roll, yaw, pitch]).as_matrix()
        np.testing.assert_allclose(
            np.reshape(rows[f"{name}.jpg"]["R"], (3, 3)), expected, atol=1e-6
        )

    # Rerun with bigger shards: the stale part-00001 goes, nothing is staged or duplicated.
    prepare_dataset("aflw2000", aflw_source, out, filter_99=False, shard_rows=10, log=None)
    assert _keys("aflw2000/") == ["_report.json", "part-00000.parquet"]
    assert load_labelled(out).num_rows == 3


def test_aborted_s3_write_leaves_output(s3_env, aflw_source):
    out = f"s3://{BUCKET}/keep"
    prepare_dataset("aflw2000", aflw_source, out, log=None)
    before = _keys("keep/")
    rows = load_labelled(out).to_pylist()
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(out, shard_rows=1) as w:
            w.write(rows)
            assert any(k.startswith("_staging-") for k in _keys("keep/"))
            raise RuntimeError("boom")
    assert _keys("keep/") == before


def test_endpoint_option_without_env(s3_env, aflw_source, monkeypatch):
    out = f"s3://{BUCKET}/explicit"
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    prepare_dataset("aflw2000", aflw_source, out, endpoint_url=endpoint, log=None)
    assert load_labelled(out, endpoint_url=endpoint).num_rows == 2
    assert _keys("explicit/") == ["_report.json", "part-00000.parquet"]


def test_ray_reads_s3_shards(s3_env, aflw_source, ray_cluster):
    out = f"s3://{BUCKET}/ray"
    prepare_dataset("aflw2000", aflw_source, out, filter_99=False, shard_rows=2, log=None)

    # Ray Data's tasks (file listing, reads) reach the server through the AWS variables the
    # session's Ray started with, as a cluster's workers reach S3 through theirs.
    batch = read_labelled(out).take_batch(10, batch_format="numpy")
    files, R = batch["file"].tolist(), np.stack(list(batch["R"])).reshape(-1, 3, 3)
    assert sorted(files) == [f"{n}.jpg" for n in sorted(AFLW2000_POSES)]
    by_file = dict(zip(files, R, strict=True))
    for name, (pitch, yaw, roll) in AFLW2000_POSES.items():
        expected = Rotation.from_euler("ZYX", [roll, yaw, pitch]).as_matrix()
        np.testing.assert_allclose(by_file[f"{name}.jpg"], expected, atol=1e-6)
