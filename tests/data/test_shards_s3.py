"""Labelled shards on S3: a real S3 API server (moto in server mode) on loopback, not a mock of the
client. Credentials and endpoint reach pyarrow through the standard AWS environment variables.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clerf_ray.data.readers import prepare_dataset
from clerf_ray.data.schema import load_labelled, read_labelled
from clerf_ray.data.shards import ShardWriter, read_report

from .fixtures import AFLW2000_POSES, build_aflw2000

BUCKET = "clerf-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket; yields the AWS variables it set."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        # Keep any real AWS configuration of the machine out of the test.
        "AWS_CONFIG_FILE": nowhere,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        _ENDPOINT[:] = [env["AWS_ENDPOINT_URL"]]
        yield env
    server.stop()


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

    # The session's Ray may have started before this module set the AWS variables, so its
    # workers lack them. Run the read as a task whose runtime_env holds them, as a job submitted
    # with `ray job submit --runtime-env-json '{"env_vars": ...}'` would; Ray Data's own tasks
    # (file listing, reads) inherit that environment.
    @ray_cluster.remote(num_cpus=0, runtime_env={"env_vars": dict(s3_env)})
    def read(path):
        batch = read_labelled(path).take_batch(10, batch_format="numpy")
        return batch["file"].tolist(), np.stack(list(batch["R"])).reshape(-1, 3, 3)

    files, R = ray_cluster.get(read.remote(out), timeout=120)
    assert sorted(files) == [f"{n}.jpg" for n in sorted(AFLW2000_POSES)]
    by_file = dict(zip(files, R, strict=True))
    for name, (pitch, yaw, roll) in AFLW2000_POSES.items():
        expected = Rotation.from_euler("ZYX", [roll, yaw, pitch]).as_matrix()
        np.testing.assert_allclose(by_file[f"{name}.jpg"], expected, atol=1e-6)
