import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE)])}
    result = subprocess.run([sys.executable, os.path.join(HERE, "mirrored_worker.py"), *args],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_losses_reduce_like_a_single_device():
    """Losses average over the global batch: one SGD step on 2 replicas equals one on 1 device."""
    report = _worker("reduce")
    assert report["replicas"] == 2
    # A wrong reduction (sum instead of mean) would make the updates differ by their own size.
    assert report["max_weight_diff"] < 1e-3 * report["max_update"], report
    assert math.isclose(report["loss_single"], report["loss_double"], rel_tol=1e-5)


def test_mirrored_run_trains_both_stages(tmp_path):
    metrics = _worker("train", str(tmp_path / "run"))
    assert all(math.isfinite(metrics[k]) for k in ("clean_accuracy", "pgd20_accuracy", "gan_test_accuracy"))
    assert (tmp_path / "run" / "classifier.keras").is_file()
    assert "finetune,2" in (tmp_path / "run" / "metrics.csv").read_text()
