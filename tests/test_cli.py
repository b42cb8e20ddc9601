"""The installed ``srsweep`` console script, run as a user would (real subprocess)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SRSWEEP = str(Path(sys.executable).with_name("srsweep"))


def run(*args, **kw):
    return subprocess.run([SRSWEEP, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def _mean_row(stdout: str) -> tuple[float, float]:
    m = re.search(r"^mean\s+([\d.]+)\s+([\d.]+)", stdout, re.M)
    assert m, stdout
    return float(m.group(1)), float(m.group(2))


@pytest.mark.parametrize(
    "name, psnr, ssim, psnr_tol, ssim_tol",
    [
        ("Set5", 28.42, 0.8104, 0.02, 0.0010),  # published MATLAB bicubic x4
        ("Set14", 26.045, 0.7034, 0.05, 0.0010),  # papers report 26.00-26.09 / 0.7027-0.704
    ],
)
def test_eval_reproduces_published_bicubic(shared_data, name, psnr, ssim, psnr_tol, ssim_tol):
    res = run("eval", shared_data / name, "--lpips", "none")
    assert res.returncode == 0, res.stderr
    p, s = _mean_row(res.stdout)
    assert abs(p - psnr) <= psnr_tol and abs(s - ssim) <= ssim_tol, res.stdout
    assert len(re.findall(r"^img_\d+", res.stdout, re.M)) == (5 if name == "Set5" else 14)


def test_eval_embedded_with_random_lpips_says_so():
    res = run("eval", "embedded", "--lpips", "random")
    assert res.returncode == 0, res.stderr
    assert "LPIPS" in res.stdout and "random-init" in res.stderr
    assert re.search(r"^mean\s+[\d.]+\s+[\d.]+\s+[\d.]+$", res.stdout, re.M), res.stdout


def test_eval_random_lpips_is_the_trunk_of_backbones_seed():
    # Issue 20: `eval --lpips random` scores with the trunk a trainer of backbones.seed builds.
    from argparse import Namespace

    import torch

    from sweeper.cli_train import _lpips
    from trainables.metrics import LPIPSMetric

    args = Namespace(lpips="random", weights_dir=None)
    same = zip(_lpips(args, 0).parameters(), LPIPSMetric("random", seed=0).parameters())
    assert all(torch.equal(a, b) for a, b in same)
    other = zip(_lpips(args, 5).parameters(), LPIPSMetric("random", seed=0).parameters())
    assert not all(torch.equal(a, b) for a, b in other)


def test_eval_auto_lpips_without_weights_is_skipped_with_a_note(tmp_path):
    res = run("eval", "embedded", "--weights-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "LPIPS skipped" in res.stderr and str(tmp_path) in res.stderr
    assert "LPIPS" not in res.stdout


def test_eval_pretrained_lpips_missing_weights_is_one_error_line(tmp_path):
    res = run("eval", "embedded", "--lpips", "pretrained", "--weights-dir", tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srsweep: error: AlexNet ImageNet weights not found")
    assert "alexnet-owt-7be5be79.pth" in lines[0] and "srsweep weights fetch" in lines[0]


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: d / "nope", "no such folder"),
        (lambda d: d, "no images found"),
    ],
)
def test_eval_bad_dataset_is_one_error_line(tmp_path, make, expect):
    res = run("eval", make(tmp_path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and str(tmp_path) in lines[0], res.stderr


def test_weights_verify_reports_missing_files(tmp_path):
    res = run("weights", "verify", tmp_path)
    assert res.returncode == 1
    assert res.stdout.count("missing") == 3 and "vgg19-dcbb9e9d.pth" in res.stdout
    assert "srsweep weights fetch" in res.stderr


def test_config_prints_defaults_and_rejects_bad_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("loss:\n  dp: {mu: 0.5, resnet_stage: 2}\n")
    res = run("config", good)
    assert res.returncode == 0 and "resnet_stage: 2" in res.stdout and "patch_size: 128" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  dp: {resnet_stage: 5}\n")
    res = run("config", bad)
    assert res.returncode == 2
    assert res.stderr.strip() == f"srsweep: error: {bad}: loss.dp.resnet_stage: 5 is not one of 1, 2, 3, 4"


def _tiny_config(tmp_path, shared_data, **extra):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "base: [sa_esrgan_lv, tiny_cpu]\n"
        "name: tiny-sa\n"
        f"data: {{train: {shared_data / 'DIV2K256'}, val: {shared_data / 'Set5'}}}\n"
        "train: {pretrain_steps: 4, steps: 4, val_every: 4, val_images: 1, val_crop: 64, log_every: 2}\n"
        "loss: {pixel: {sa: {sa_share_target: null, beta2: 20}}}\n"  # the paper's fixed beta2
    )
    return cfg


def test_train_logs_a_complete_run_to_mlflow(tmp_path, shared_data):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run(
        "train",
        _tiny_config(tmp_path, shared_data),
        "--out",
        tmp_path / "run",
        "--tracking-uri",
        uri,
        "--experiment",
        "t",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "random-init" in res.stdout and "step      8" in res.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED" and r.data.tags["backbones"] == "random-init"
    assert (
        r.data.params["loss.pixel.sa.beta2"] == "20.0" and r.data.params["model.generator.num_feat"] == "16"
    )
    hist = client.get_metric_history(r.info.run_id, "val_psnr")
    assert [m.step for m in hist] == [4, 8] and all(m.value > 10 for m in hist)
    shares = client.get_metric_history(r.info.run_id, "sa_share")
    assert shares and all(0 < m.value < 1 for m in shares)
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert "config.yaml" in arts and "images" in arts
    assert Path(r.data.tags["checkpoint.last"]).is_file()
    # The trained generator can be scored like bicubic.
    res = run("eval", shared_data / "Set5", "--model", tmp_path / "run" / "last.pt", "--lpips", "none")
    assert res.returncode == 0 and "generator" in res.stdout, res.stderr[-2000:]
    assert 20 < _mean_row(res.stdout)[0] < 40
    # The run folder can be resumed (already finished: nothing to do, same MLflow run).
    res = run(
        "train",
        _tiny_config(tmp_path, shared_data),
        "--out",
        tmp_path / "run",
        "--tracking-uri",
        uri,
        "--experiment",
        "t",
        "--resume",
        cwd=tmp_path,
    )
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr[-2000:]
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_train_bad_data_fails_before_any_mlflow_run(tmp_path, shared_data):
    cfg = _tiny_config(tmp_path, shared_data)
    res = run(
        "train", cfg, "--set", f"data.train={tmp_path / 'nope'}", "--out", tmp_path / "run", cwd=tmp_path
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such folder" in lines[-1], res.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_ui_serves_the_store_over_http(tmp_path):
    """A real `mlflow server` process started by `srsweep ui`, queried over its REST API."""
    import json
    import os
    import signal
    import socket
    import time
    import urllib.request

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ui-check")
    run = client.create_run(exp, tags={"backbones": "random-init"})
    client.log_metric(run.info.run_id, "val_lpips", 0.25, step=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [SRSWEEP, "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
            time.sleep(1)
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}")
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.load(r)["run"]
        assert (
            data["data"]["metrics"][0]["key"] == "val_lpips" and data["data"]["metrics"][0]["value"] == 0.25
        )
        assert {"key": "backbones", "value": "random-init"} in data["data"]["tags"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_run_without_weights_fails_before_anything_starts(tmp_path, shared_data):
    """weights: pretrained with an empty weights folder: one line, no Ray, no sweep folder, no MLflow store."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: noweights\nbase: [sa_esrgan_lv, tiny_cpu]\n"
        f"set: {{data: {{train: {shared_data / 'DIV2K256'}, val: {shared_data / 'Set5'}}},\n"
        f"      backbones: {{weights: pretrained, weights_dir: {tmp_path / 'w'}}},\n"
        "      loss: {pixel: {sa: {sa_share_target: null, beta2: 20}}}}\n"
        "space: [{path: loss.pixel.sa.beta2, float: [1, 40]}]\n"
        "objective: {metrics: [{name: val_lpips, mode: min}]}\nscheduler: {type: none}\n"
    )
    res = run("run", sweep, "--storage", tmp_path / "rr", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "VGG19 ImageNet weights not found" in lines[0] and str(tmp_path / "w") in lines[0]
    )
    assert not (tmp_path / "rr").exists() and not (tmp_path / "mlflow.db").exists()
