"""Sweep storage on a folder and on a REAL S3 server (moto's server mode on 127.0.0.1, started
and stopped here): a Ray Tune experiment writes its state and checkpoints to s3://, is
interrupted by an error, and ``Tuner.restore`` from s3:// continues it from the checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sweeper.storage import (
    StorageError,
    check_writable,
    download_dir,
    exists,
    join,
    read_text,
    resolve_storage,
    upload_file,
    write_text,
)

MOTO = shutil.which("moto_server", path=str(Path(sys.executable).parent))


def test_folder_storage_roundtrip(tmp_path):
    path, fs = resolve_storage(tmp_path / "runs")
    assert fs is None and path == str((tmp_path / "runs").resolve())
    check_writable(path)
    target = join(path, "demo-1", "sweep.json")
    write_text(target, json.dumps({"a": 1}))
    assert json.loads(read_text(target)) == {"a": 1} and exists(target)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["demo-1"]  # the probe file is gone


def test_bad_storage_is_one_line(tmp_path):
    with pytest.raises(StorageError, match=r"^--storage gs://b/p: only a folder or s3://bucket/prefix"):
        resolve_storage("gs://b/p")
    with pytest.raises(StorageError, match="no bucket"):
        resolve_storage("s3:///prefix")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores folder modes: use a path under a file instead
            ro = tmp_path / "file"
            ro.write_text("x")
        with pytest.raises(StorageError, match=f"^--storage {ro}.* is not writable: "):
            check_writable(str(ro))
    finally:
        (tmp_path / "ro").chmod(0o700)


@pytest.fixture(scope="module")
def s3():
    if MOTO is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]': the dev extra has it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        end = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > end:
                    log.seek(0)
                    raise RuntimeError(f"moto_server did not start: {log.read()[-1000:]!r}") from None
                time.sleep(0.3)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir("sweeps")
        yield port
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_s3_helpers(s3):
    path, fs = resolve_storage("s3://sweeps/team/a/")
    assert path == "sweeps/team/a" and fs.type_name == "s3"
    check_writable(path, fs)
    write_text(join(path, "demo", "sweep.json"), '{"parent_run_id": "abc"}', fs)
    assert json.loads(read_text("sweeps/team/a/demo/sweep.json", fs)) == {"parent_run_id": "abc"}
    with pytest.raises(StorageError, match=r"^--storage s3://missing-bucket/x is not writable: "):
        check_writable(*resolve_storage("s3://missing-bucket/x"))


def _steps(config):
    """Reports steps 1..4 with a checkpoint each; the first attempt of x=1 dies after step 2."""
    from ray import tune

    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["step"]
    for step in range(start + 1, 5):
        if step == 3 and config["x"] == 1.0 and not Path(config["marker"]).exists():
            Path(config["marker"]).write_text("crashed once")
            raise RuntimeError("simulated node loss")
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"step": step}))
            tune.report(
                {"step": step, "score": step * config["x"], "resumed_from": start},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def test_tune_experiment_on_s3_and_restore(s3, tmp_path):
    import pyarrow.fs as pafs
    import ray
    from ray import tune

    path, fs = resolve_storage("s3://sweeps/team")
    if ray.is_initialized():  # the workers must inherit the AWS_* variables set by the fixture
        ray.shutdown()
    here = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        object_store_memory=2 * 2**30,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )  # workers import _steps from this file
    try:
        tuner = tune.Tuner(
            tune.with_resources(_steps, {"cpu": 1}),
            param_space={"x": tune.grid_search([1.0, 2.0]), "marker": str(tmp_path / "crashed")},
            tune_config=tune.TuneConfig(metric="score", mode="max"),
            run_config=tune.RunConfig(name="demo", storage_path=path, storage_filesystem=fs, verbose=0),
        )
        first = tuner.fit()
        assert len(first.errors) == 1  # x=1 crashed at step 3, x=2 finished
        exp = join(path, "demo")
        keys = [i.path for i in fs.get_file_info(pafs.FileSelector(exp, recursive=True))]
        assert any(k.endswith("tuner.pkl") for k in keys)
        assert any("/checkpoint_000001/state.json" in k for k in keys)
        ckpts = sorted(k for k in keys if "checkpoint_" in k)
        print(f"\n{len(keys)} objects under s3://{exp}, e.g. {ckpts[:3]}")
        assert tune.Tuner.can_restore(exp, storage_filesystem=fs)

        restored = tune.Tuner.restore(
            exp, tune.with_resources(_steps, {"cpu": 1}), resume_errored=True, storage_filesystem=fs
        ).fit()
        df = restored.get_dataframe()
        assert not restored.errors and sorted(df["step"]) == [4, 4]
        # The crashed trial continued from its step-2 checkpoint in S3, not from scratch; the
        # finished one was not run again.
        assert sorted(df["resumed_from"]) == [0, 2], df[["trial_id", "resumed_from"]]
        print(
            f"restored from s3://{exp}: steps {sorted(df['step'])}, resumed_from {sorted(df['resumed_from'])}"
        )

        # The driver's readers take local folders: a mirror of the experiment reads the same.
        local = download_dir(exp, fs, tmp_path / "mirror")
        analysis = tune.ExperimentAnalysis(str(local))
        assert sorted(analysis.dataframe()["step"]) == [4, 4]
        assert len(list(local.glob("*/checkpoint_*/state.json"))) >= 4
        (tmp_path / "results.parquet").write_bytes(b"PAR1")
        upload_file(tmp_path / "results.parquet", join(exp, "results.parquet"), fs)
        assert exists(join(exp, "results.parquet"), fs)
    finally:
        ray.shutdown()
