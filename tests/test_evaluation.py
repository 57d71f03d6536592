import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import evaluate
import train
from robgan_tf import evaluation, export, models, report, rundir
from robgan_tf.config import AttackSettings

from conftest import TINY_TRAIN_ARGS


def masked(classifier, kind):
    """The classifier behind a gradient-masking defence: rounded inputs, or a saturated softmax."""
    inputs = keras.Input(classifier.input_shape[1:])
    if kind == "rounded input":
        rounded = keras.layers.Lambda(lambda t: tf.stop_gradient(tf.round(t * 4) / 4))(inputs)
        return keras.Model(inputs, classifier(rounded))
    return keras.Model(inputs, keras.layers.Lambda(lambda t: 1e4 * t)(classifier(inputs)))


FAST = AttackSettings(apgd_steps=50, apgd_targets=3, square_queries=300)


def test_autoattack_orders_the_attacks_and_passes_the_masking_checks(trained_classifier, tiny_dataset):
    x, y = tiny_dataset.x_test, tiny_dataset.y_test
    result = evaluation.evaluate(evaluation.inference_fn(trained_classifier), x, y, [0.3], settings=FAST,
                                 check_masking=True, large_eps=1.0, verbose=False)
    acc = {a: v["0.3"] for a, v in result["robust_accuracy"].items() if "0.3" in v}
    assert acc["autoattack"] <= acc["apgd-ce"] <= acc["pgd-20"] <= result["clean_accuracy"]
    assert acc["autoattack"] < result["clean_accuracy"] - 0.2  # the attacks bite at this eps
    stages = result["autoattack_stages"]["0.3"]
    assert stages["apgd-ce"] >= stages["apgd-t"] >= stages["square"] == acc["autoattack"]
    assert set(result["robust_accuracy"]["pgd-20"]) == {"0.1", "0.2", "0.3", "1"}
    checks = {c["check"]: c["passed"] for c in result["masking_checks"]}
    assert all(checks.values()), result["masking_checks"]


@pytest.mark.parametrize("kind", ["rounded input", "saturated softmax"])
def test_masking_checks_flag_a_masked_model(trained_classifier, tiny_dataset, kind):
    model = masked(trained_classifier, kind)
    x, y = tiny_dataset.x_test, tiny_dataset.y_test
    result = evaluation.evaluate(evaluation.inference_fn(model), x, y, [0.3], settings=FAST,
                                 check_masking=True, large_eps=1.0, verbose=False)
    failed = [c["check"] for c in result["masking_checks"] if c["passed"] is False]
    assert "white-box accuracy < 2% at a large eps" in failed, result["masking_checks"]
    assert report.build(result)["possible_gradient_masking"]


def test_wilson_interval():
    low, high = evaluation.wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = evaluation.wilson_interval(1.0, 50)
    assert high == 1.0 and low == pytest.approx(0.9287, abs=1e-4)


def test_float16_model_is_evaluated_in_float32(tiny_dataset, float16_classifier):
    model = float16_classifier
    copy = models.float32_copy(model)
    assert copy.output.dtype == "float32" and all(
        layer.dtype_policy.compute_dtype == "float32" for layer in copy._flatten_layers())
    x = tiny_dataset.x_test[:8].astype(np.float32) / 255.0
    np.testing.assert_allclose(copy(x), tf.cast(model(x), tf.float32), atol=0.05)
    plain = models.classifier_from(models.build_discriminator(tiny_dataset.image_shape, 4, width=4, depth=2))
    assert models.float32_copy(plain) is plain


def test_saved_model_export_evaluates_like_the_keras_model(trained_classifier, tiny_dataset, tmp_path):
    path = export.export_classifier(trained_classifier, tiny_dataset.class_names, str(tmp_path), "tiny")
    x, y = tiny_dataset.x_test, tiny_dataset.y_test
    results = [evaluation.evaluate(fn, x, y, [0.3], attack=evaluation.PGD(), verbose=False)
               for fn in (evaluation.inference_fn(trained_classifier), evaluation.load_classifier(path),
                          evaluation.load_classifier(str(tmp_path / "tiny")))]
    accuracies = [r["robust_accuracy"]["pgd-20"]["0.3"] for r in results]
    assert max(accuracies) - min(accuracies) <= 1 / len(y), accuracies
    assert accuracies[0] < 0.5


@pytest.fixture(scope="module")
def tiny_run(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    args = TINY_TRAIN_ARGS + ["--data-dir", str(tiny_data_dir), "--out", str(out), "--epochs", "1",
                              "--finetune-epochs", "0"]
    assert train.main(args) == 0
    return out


def test_evaluate_cli_writes_the_report(tiny_run, tiny_data_dir, capsys):
    args = ["--model", str(tiny_run), "--data-dir", str(tiny_data_dir), "--n-examples", "64", "--eps", "0.05",
            "0.1", "--apgd-steps", "20", "--square-queries", "100", "--check-masking", "--large-eps", "1"]
    assert evaluate.main(args) == 0
    out = tiny_run / "evaluation"
    report_json = json.loads((out / report.REPORT_JSON).read_text())
    assert report_json["dataset"] == "tiny" and report_json["n_examples"] == 64 and report_json["split"] == "test"
    for attack in ("pgd-20", "apgd-ce", "autoattack"):
        for eps in ("0.05", "0.1"):
            acc = report_json["robust_accuracy"][attack][eps]
            low, high = report_json["robust_accuracy_ci95"][attack][eps]
            assert low <= acc <= high
    assert report_json["robust_accuracy"]["pgd-20"]["1"] <= 0.02  # the tiny Rob-GAN classifier is not masked
    assert "| autoattack | 0.1 |" in (out / report.REPORT_MD).read_text()
    for name in (report.CURVE_PNG, report.EXAMPLES_PNG, report.ROBUST_EXAMPLES):
        assert (out / name).stat().st_size > 1000, name
    assert "Gradient-masking checks" in capsys.readouterr().out


def test_evaluate_cli_errors_are_one_clear_line(tiny_run, tiny_data_dir, tmp_path, capsys):
    assert evaluate.main(["--model", str(tmp_path / "nothing"), "--dataset", "tiny",
                          "--data-dir", str(tiny_data_dir)]) == 1
    assert "neither a run directory" in capsys.readouterr().err
    wrong = tmp_path / "data"
    wrong.mkdir()
    np.savez(wrong / "tiny_test.npz", x=np.zeros((8, 28, 28, 1), np.uint8), y=np.zeros(8, np.uint8))
    np.savez(wrong / "tiny_train.npz", x=np.zeros((8, 28, 28, 1), np.uint8), y=np.zeros(8, np.uint8))
    assert evaluate.main(["--model", str(tiny_run / rundir.CLASSIFIER), "--dataset", "tiny",
                          "--data-dir", str(wrong)]) == 1
    assert "does not take tiny images of shape (28, 28, 1)" in capsys.readouterr().err
    out = tmp_path / "not-written"
    assert evaluate.main(["--model", str(tiny_run / rundir.CLASSIFIER), "--dataset", "tiny", "--pgd-steps", "0",
                          "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 1
    assert "--pgd-steps 0 is out of range: it must be >= 1" in capsys.readouterr().err
    assert not out.exists()
    assert evaluate.main(["--model", str(tiny_run / rundir.CLASSIFIER), "--dataset", "tiny", "--n-examples", "0",
                          "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 1
    assert "--n-examples 0: it must be >= 1" in capsys.readouterr().err
    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(b"PK\x03\x04 not a model")
    assert evaluate.main(["--model", str(damaged), "--dataset", "tiny", "--data-dir", str(tiny_data_dir),
                          "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists but cannot be read as a Keras model" in err and err.count("\n") == 1 and not out.exists()
