import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import export
from robgan_tf import models, rundir
from robgan_tf.attacks import pgd

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist_test.npz")


def _test_images(n=64):
    """Real MNIST test images when the shared data is there, else random pixels of the same shape."""
    if os.path.exists(SHARED):
        with np.load(SHARED) as f:
            return f["x"][:n], f["y"][:n].astype(np.int32)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    classifier = models.classifier_from(models.build_discriminator((28, 28, 1), 10, width=8, depth=2))
    classifier.save(run / rundir.CLASSIFIER)
    (run / rundir.CONFIG).write_text(json.dumps({"dataset": "mnist", "class_names": [str(i) for i in range(10)]}))
    out = tmp_path_factory.mktemp("exports")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A fresh process: export.py alone must register the custom layers to load classifier.keras.
    subprocess.run([sys.executable, os.path.join(root, "export.py"), "--model", str(run), "--out", str(out)],
                   check=True, capture_output=True, cwd=root)
    assert export.main(["--model", str(run), "--out", str(out)]) == 0  # a second version
    return classifier, out / "mnist_robgan"


def test_a_baseline_run_exports_under_its_method_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    models.classifier_from(models.build_discriminator((28, 28, 1), 10, width=4, depth=2)).save(run / rundir.CLASSIFIER)
    config = {"dataset": "mnist", "method": "pgd-at", "class_names": [str(i) for i in range(10)]}
    (run / rundir.CONFIG).write_text(json.dumps(config))
    assert export.main(["--model", str(run), "--out", str(tmp_path / "exports")]) == 0
    assert (tmp_path / "exports" / "mnist_pgd_at" / "1" / "saved_model.pb").exists()


def test_layout_is_tf_serving_versions(exported):
    _, model_dir = exported
    assert sorted(os.listdir(model_dir)) == ["1", "2"]
    assert (model_dir / "1" / "saved_model.pb").is_file()
    assert (model_dir / "1" / "assets.extra" / "classifier.keras").is_file()


def test_saved_model_cli_show_and_run(exported, tmp_path):
    _, model_dir = exported
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(cli + ["show", "--dir", str(model_dir / "1"), "--all"],
                           capture_output=True, text=True, check=True).stdout
    for text in ("signature_def['serving_default']", "signature_def['serving_uint8']", "(-1, 28, 28, 1)",
                 "outputs['probabilities']", "outputs['class_name']", "DT_UINT8"):
        assert text in shown, text
    x, _ = _test_images(2)
    np.save(tmp_path / "x.npy", x.astype(np.float32) / 255.0)
    ran = subprocess.run(cli + ["run", "--dir", str(model_dir / "1"), "--tag_set", "serve",
                                "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'x.npy'}"],
                         capture_output=True, text=True, check=True).stdout
    probs = ran[ran.index("probabilities"):]
    values = np.array([float(v) for v in probs[probs.index("[[") + 2:probs.index("]]")].replace("]", " ")
                       .replace("[", " ").split()])
    assert values.shape == (20,) and np.allclose(values.reshape(2, 10).sum(1), 1.0, atol=1e-4)


def test_fresh_process_load_matches_keras_on_clean_and_adversarial_images(exported, tmp_path):
    classifier, model_dir = exported
    x, y = _test_images(64)
    images = x.astype(np.float32) / 255.0
    adversarial = pgd(lambda a: classifier(a, training=False), images, y, 0.3, 10, 0.075,
                      tf.constant([0, 1], tf.int64)).numpy()
    np.save(tmp_path / "clean.npy", images)
    np.save(tmp_path / "adv.npy", adversarial)
    np.save(tmp_path / "raw.npy", x)
    script = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(model_dir / "1")!r})
f, u = m.signatures["serving_default"], m.signatures["serving_uint8"]
load = lambda name: tf.constant(np.load({str(tmp_path)!r} + "/" + name + ".npy"))
out = {{"clean": f(images=load("clean"))["logits"].numpy().tolist(),
        "adv": f(images=load("adv"))["logits"].numpy().tolist(),
        "raw": u(images=load("raw"))["logits"].numpy().tolist()}}
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    served = {k: np.array(v) for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    keras_clean = classifier(images, training=False).numpy()
    keras_adv = classifier(adversarial, training=False).numpy()
    assert np.abs(served["clean"] - keras_clean).max() <= 1e-5
    assert np.abs(served["raw"] - keras_clean).max() <= 1e-5
    assert np.abs(served["adv"] - keras_adv).max() <= 1e-5
    np.testing.assert_array_equal(served["adv"].argmax(1), keras_adv.argmax(1))


@pytest.mark.parametrize("signature, shape", [
    ("serving_default", (2, 32, 32, 1)),  # the network alone (global sum pooling) takes any size
    ("serving_default", (2, 28, 28, 3)),  # was a cryptic "groups" error
    ("serving_uint8", (1, 56, 56, 1)),
    ("serving_uint8", (1, 32, 32, 3)),
])
def test_both_signatures_check_the_exact_image_shape_and_name_it(exported, signature, shape):
    """Issue 16.9: through tf.saved_model.load, as a client that skips the signature's shape."""
    _, model_dir = exported
    serve = tf.saved_model.load(str(model_dir / "1")).signatures[signature]
    dtype = tf.uint8 if signature == "serving_uint8" else tf.float32
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError), match="28, 28, 1"):
        serve(images=tf.zeros(shape, dtype))


@pytest.mark.parametrize("signature", ["serving_default", "serving_uint8"])
def test_an_empty_batch_gets_empty_outputs(exported, signature):
    _, model_dir = exported
    serve = tf.saved_model.load(str(model_dir / "1")).signatures[signature]
    empty = serve(images=tf.zeros((0, 28, 28, 1), tf.uint8 if signature == "serving_uint8" else tf.float32))
    assert empty["logits"].shape == (0, 10) and empty["class_name"].shape == (0,)
    assert empty["probabilities"].shape == (0, 10) and empty["class_id"].shape == (0,)


def test_wrong_image_size_and_range_are_rejected(exported):
    _, model_dir = exported
    serve = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(images=tf.zeros((1, 32, 32, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixels must be in"):
        serve(images=tf.fill((1, 28, 28, 1), 255.0))
    out = serve(images=tf.zeros((3, 28, 28, 1)))
    assert out["class_name"].dtype == tf.string and out["class_id"].shape == (3,)


def _readme_block(after):
    """The first ```python block of README.md that follows the line containing `after`."""
    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    rest = text[text.index(after):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```", start)]


def test_readme_rest_request_feeds_the_signature(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(_readme_block("A REST request"), {})
    request = json.loads((tmp_path / "request.json").read_text())
    _, model_dir = exported
    serve = tf.saved_model.load(str(model_dir / "1")).signatures[request["signature_name"]]
    out = serve(images=tf.constant(request["instances"], tf.float32))
    assert out["probabilities"].shape == (1, 10) and out["class_name"].shape == (1,)


def test_readme_grpc_request_matches_the_uint8_signature(exported):
    block = _readme_block("gRPC, with")
    assert 'signature_name = "serving_uint8"' in block and 'request.inputs["images"]' in block
    _, model_dir = exported
    signature = tf.saved_model.load(str(model_dir / "1")).signatures["serving_uint8"]
    assert signature.structured_input_signature[1]["images"].dtype == tf.uint8
    assert {"class_name", "probabilities"} <= set(signature.structured_outputs)
