import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robgan_tf.data import Dataset  # noqa: E402


# train.py flags for a run of a few seconds on the tiny data set (4 classes of 16x16 images).
TINY_TRAIN_ARGS = ["--dataset", "tiny", "--width", "4", "--g-width", "4", "--depth", "2", "--batch-size", "32",
                   "--pgd-steps", "2", "--eps", "0.1", "--eval-examples", "40", "--train-limit", "128",
                   "--eps-warmup-epochs", "0.5"]


def make_images(n, size=16, channels=1, num_classes=4, seed=0):
    """Tiny learnable images: class c is a bright square in a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = rng.integers(0, 60, (n, size, size, channels))
    half = size // 2
    for i, c in enumerate(y):
        r, q = divmod(int(c) % 4, 2)
        x[i, r * half + 2:r * half + half - 2, q * half + 2:q * half + half - 2] += 180
    return x.clip(0, 255).astype(np.uint8), y.astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_dataset():
    x, y = make_images(512, seed=0)
    x_test, y_test = make_images(128, seed=1)
    return Dataset("tiny", x, y, x_test, y_test)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, tiny_dataset):
    """A --data-dir holding tiny_train.npz / tiny_test.npz."""
    d = tmp_path_factory.mktemp("data")
    np.savez(d / "tiny_train.npz", x=tiny_dataset.x_train, y=tiny_dataset.y_train.astype(np.uint8))
    np.savez(d / "tiny_test.npz", x=tiny_dataset.x_test, y=tiny_dataset.y_test.astype(np.uint8))
    return d


@pytest.fixture(scope="session")
def trained_classifier(tiny_dataset):
    """A small plain (non-robust) classifier that gets the tiny test set right."""
    import keras

    from robgan_tf import data

    keras.utils.set_random_seed(0)
    model = _functional(tiny_dataset.image_shape, [
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(4),
        keras.layers.Flatten(),
        keras.layers.Dense(tiny_dataset.num_classes),
    ])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = data.TrainData(tiny_dataset.x_train, tiny_dataset.y_train, 64)
    model.fit(batches.epochs(0, 5), epochs=5, steps_per_epoch=batches.steps, verbose=0)
    return model


def make_color_images(n, num_classes=10, seed=0):
    """CIFAR-shaped (32x32x3) images: class c is a faint smooth colour pattern (fixed across
    splits) plus noise, easy to learn and, for a plain model, easy to attack at eps = 8/255."""
    patterns = np.random.default_rng(1234).normal(size=(num_classes, 4, 4, 3))
    patterns = np.repeat(np.repeat(patterns, 8, axis=1), 8, axis=2)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    x = 0.5 + 0.02 * patterns[y] + 0.03 * rng.normal(size=(n, 32, 32, 3))
    return (255 * x.clip(0, 1)).round().astype(np.uint8), y.astype(np.uint8)


@pytest.fixture(scope="session")
def color_classifier():
    """A plain CNN that classifies the CIFAR-shaped images; returns (model, x_test, y_test)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = make_color_images(2000, seed=0)
    x_test, y_test = make_color_images(200, seed=1)
    model = _functional((32, 32, 3), [
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x / 255.0, y, batch_size=64, epochs=8, verbose=0)
    return model, x_test, y_test


def _functional(input_shape, layers):
    """A functional Keras model (it has .input and .output, unlike an uncalled Sequential)."""
    import keras

    inputs = keras.Input(input_shape)
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, h)


@pytest.fixture
def float16_classifier(tiny_dataset):
    """A tiny classifier built under the mixed_float16 policy (the global policy is restored)."""
    import keras

    from robgan_tf import models

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return models.classifier_from(models.build_discriminator(tiny_dataset.image_shape, 4, width=4, depth=2))
    finally:
        keras.mixed_precision.set_global_policy("float32")
