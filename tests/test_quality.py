import keras
import numpy as np

from robgan_tf import methods, quality, rundir
from robgan_tf.callbacks import EpochReport


def _generator(ds, class_images, noise_std, z_dim=16):
    """G(z, y) = class_images[y] + noise(z): noise_std 0 gives a collapsed generator."""
    size = int(np.prod(ds.image_shape))
    z = keras.Input((z_dim,))
    y = keras.Input((), dtype="int32")
    noise = keras.layers.Dense(size, use_bias=False,
                               kernel_initializer=keras.initializers.RandomNormal(stddev=noise_std + 1e-12))(z)
    template = keras.layers.Embedding(ds.num_classes, size,
                                      embeddings_initializer=keras.initializers.Constant(class_images))(y)
    image = keras.layers.Reshape(ds.image_shape)(keras.layers.Add()([template, noise]))
    return keras.Model([z, y], image)


def _class_means(ds):
    x = ds.x_train.astype(np.float32) / 255.0
    return np.stack([x[ds.y_train == c].mean(0).ravel() for c in range(ds.num_classes)])


def test_constant_gray_generator_is_reported_as_collapsed(tiny_dataset, trained_classifier, tmp_path, capsys):
    size = int(np.prod(tiny_dataset.image_shape))
    gray = _generator(tiny_dataset, np.full((tiny_dataset.num_classes, size), 0.5), noise_std=0.0)
    scorer = quality.GeneratorQuality(tiny_dataset, trained_classifier, per_class=20)
    scores = scorer(gray)
    assert scores["sample_diversity"] < 1e-3
    assert quality.collapse_warning(scores) is not None

    (tmp_path / rundir.SAMPLES).mkdir()
    report = EpochReport(str(tmp_path), "cotrain", 0, lambda: gray, scorer, tiny_dataset.class_names,
                         methods.get("robgan").metric_columns())
    report.on_epoch_begin(0)
    report.on_epoch_end(0, {"d_loss": 1.0})
    assert "GENERATOR COLLAPSE SUSPECTED" in capsys.readouterr().out
    assert (tmp_path / rundir.SAMPLES / "epoch_001.png").is_file()
    assert "cotrain,1" in (tmp_path / rundir.METRICS_CSV).read_text()


def test_class_correct_diverse_generator_passes(tiny_dataset, trained_classifier):
    good = _generator(tiny_dataset, _class_means(tiny_dataset), noise_std=0.02)
    scores = quality.GeneratorQuality(tiny_dataset, trained_classifier, per_class=20)(good)
    assert scores["gan_test_accuracy"] > 0.9
    assert 0.3 < scores["sample_diversity"] < 3.0
    assert quality.collapse_warning(scores) is None


def test_diverse_but_wrong_class_generator_is_flagged(tiny_dataset, trained_classifier):
    shifted = np.roll(_class_means(tiny_dataset), 1, axis=0)  # every class draws the next class's images
    scores = quality.GeneratorQuality(tiny_dataset, trained_classifier, per_class=20)(
        _generator(tiny_dataset, shifted, noise_std=0.02))
    assert scores["gan_test_accuracy"] < 0.2
    assert "GAN-test accuracy" in quality.collapse_warning(scores)


def test_a_class_drawing_near_copies_is_flagged_even_when_the_mean_diversity_is_fine():
    # the CIFAR-10 Rob-GAN study run after 2 epochs: every class's row shows near-copies of one image
    scores = {"gan_test_accuracy": 0.696, "gan_test_reference_accuracy": 0.523, "sample_diversity": 0.41,
              "min_class_diversity": 0.24, "least_diverse_class": 4}
    assert "class 4 sample diversity 0.24" in quality.collapse_warning(scores)
    assert quality.collapse_warning({**scores, "min_class_diversity": 0.36}) is None


def test_mean_pairwise_distance():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert quality.mean_pairwise_distance(pts) == np.float64((5 + 0 + 5) / 3)
