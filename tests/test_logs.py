"""Our output carries no TensorFlow start-up lines a user cannot act on (issue 16, point 12)."""

import os
import re
import subprocess
import sys
import warnings

import pytest

from robgan_tf import quality, quiet

from conftest import make_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_NOISE = re.compile(r"^I\d{4} |oneDNN|absl::InitializeLog|cuInit", re.MULTILINE)


def _python(*args):
    """A fresh interpreter with TensorFlow's default log level (conftest sets 2 for the suite)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_help_prints_no_tensorflow_log_lines():
    result = _python("train.py", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: train.py")
    assert not TF_NOISE.search(result.stderr), result.stderr


@pytest.mark.skipif(not quiet.no_nvidia_device(), reason="an NVIDIA device is present")
def test_no_cuda_error_on_a_machine_without_gpu():
    result = _python("-c", "import robgan_tf, tensorflow as tf; print(float(tf.reduce_sum(tf.ones(2))))")
    assert result.returncode == 0 and result.stdout.strip() == "2.0"
    assert not TF_NOISE.search(result.stderr), result.stderr


def test_filter_drops_info_and_known_noise_only():
    drop = [b"I0000 00:00:1796244256.975989   19007 port.cc:153] oneDNN custom operations are on.\n",
            b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find\n",
            b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"]
    keep = [b"W0000 00:00:1796244289.165356   19210 some_op.cc:12] a real warning\n",
            b"E0000 00:00:1796244290.303349   19210 some_op.cc:12] a real error\n",
            b"/x/y.py:3: UserWarning: a Python warning\n", b"Traceback (most recent call last):\n"]
    cuda = b"E0000 00:00:1796244289.165356   19210 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
    assert all(quiet.unwanted(line, no_gpu=False) for line in drop)
    assert not any(quiet.unwanted(line, no_gpu=True) for line in keep)
    assert quiet.unwanted(cuda, no_gpu=True) and not quiet.unwanted(cuda, no_gpu=False)


def test_reference_classifier_training_does_not_warn_about_shuffle():
    x, y = make_images(64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quality.fit_reference_classifier(x, y, 4, steps=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]


def test_the_classifier_graph_gives_grappler_no_remapper_error(capfd):
    import tensorflow as tf

    from robgan_tf import models

    classifier = models.classifier_from(models.build_discriminator((28, 28, 1), 10, width=8, depth=3))
    x, y = tf.random.uniform((4, 28, 28, 1), seed=1), tf.constant([0, 1, 2, 3])

    @tf.function
    def input_gradient(images):  # as an attack step runs the classifier
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, classifier(images)))
        return tape.gradient(loss, images)

    assert input_gradient(x).shape == x.shape
    assert "remapper failed" not in capfd.readouterr().err
