import json
import math
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import TINY_TRAIN_ARGS
from robgan_tf import rundir

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE)])}
    result = subprocess.run([sys.executable, os.path.join(HERE, "mirrored_worker.py"), *args],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_losses_reduce_like_a_single_device():
    """Losses average over the global batch: one SGD step on 2 replicas equals one on 1 device, and
    so does the step of the weights' average (kept by the first replica)."""
    report = _worker("reduce")
    assert report["replicas"] == 2
    # A wrong reduction (sum instead of mean) would make the updates differ by their own size.
    assert report["max_weight_diff"] < 1e-3 * report["max_update"], report
    assert math.isclose(report["loss_single"], report["loss_double"], rel_tol=1e-5)


def test_mirrored_run_trains_both_stages_with_both_averages_and_projection(tmp_path):
    metrics = _worker("train", str(tmp_path / "run"))
    assert all(math.isfinite(metrics[k]) for k in ("clean_accuracy", "pgd20_accuracy", "gan_test_accuracy"))
    assert (tmp_path / "run" / "classifier.keras").is_file()
    assert "finetune,2" in (tmp_path / "run" / "metrics.csv").read_text()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multiworker_two_local_workers_finish_with_identical_weights(tiny_data_dir, tmp_path):
    import keras

    root = os.path.dirname(HERE)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    out = tmp_path / "run"
    workers = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        args = TINY_TRAIN_ARGS + ["--data-dir", str(tiny_data_dir), "--out", str(out), "--epochs", "1",
                                  "--finetune-epochs", "1", "--distribute", "multiworker", "--ema-decay", "0.9"]
        workers.append(subprocess.Popen([sys.executable, os.path.join(root, "train.py"), *args], cwd=tmp_path,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    chief = keras.saving.load_model(out / "classifier.keras")
    other = keras.saving.load_model(out / "workers" / "1" / "classifier.keras")
    assert len(chief.weights) == len(other.weights) > 0
    for a, b in zip(chief.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert "finetune,2" in (out / "metrics.csv").read_text()
    # each worker runs fine-tuning's catastrophic-overfitting guard itself: on the same weights and check batch it
    # must measure the same, or one worker would stop while the other waits for it
    guard_checks = [[r["guard_pgd10_acc"] for r in rundir.read_metrics_rows(run) if r["stage"] == "finetune"]
                    for run in (out, out / "workers" / "1")]
    assert guard_checks[0] == guard_checks[1] and len(guard_checks[0]) == 1 and guard_checks[0][0] != ""
