import keras
import numpy as np
import pytest

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


def _real_image_generator(ds, per_class=64, z_dim=16, collapsed_class=None):
    """G(z, y) = one of per_class real training images of class y, picked by z (all the same
    image for `collapsed_class`): as diverse as real data, except in that class."""
    x = ds.x_train.astype(np.float32) / 255.0
    table = np.concatenate([x[ds.y_train == c][[0] * per_class if c == collapsed_class else slice(per_class)]
                            .reshape(per_class, -1) for c in range(ds.num_classes)])
    z = keras.Input((z_dim,))
    y = keras.Input((), dtype="int32")
    pick = keras.ops.cast(keras.ops.floor(keras.ops.abs(z[:, 0]) * 1000.0), "int32") % per_class
    image = keras.layers.Embedding(len(table), table.shape[1], embeddings_initializer=keras.initializers.Constant(
        table))(y * per_class + pick)
    return keras.Model([z, y], keras.layers.Reshape(ds.image_shape)(image))


def test_class_correct_diverse_generator_passes(tiny_dataset, trained_classifier):
    scores = quality.GeneratorQuality(tiny_dataset, trained_classifier, per_class=20)(
        _real_image_generator(tiny_dataset))
    assert scores["gan_test_accuracy"] > 0.9
    assert 0.8 < scores["min_class_diversity"] <= scores["sample_diversity"] < 1.25  # real images: ~1
    assert quality.collapse_warning(scores) is None


def test_gan_train_learns_again_at_every_score(tiny_dataset, trained_classifier):
    # GAN-train's CNN is set back to its first weights and optimizer state before each score; the
    # learning rate must survive that reset, or every score after the first is an untrained CNN's
    scorer = quality.GeneratorQuality(tiny_dataset, trained_classifier, per_class=20)
    first, second = (scorer(_real_image_generator(tiny_dataset))["gan_train_accuracy"] for _ in range(2))
    assert scorer.real_train_accuracy > 0.8
    assert first > 0.8 and second > 0.8
    assert float(scorer._cnn.optimizer.learning_rate) == pytest.approx(quality.REFERENCE_LEARNING_RATE)


def test_feature_diversity_and_frechet_distance_of_collapsed_and_real_generators(tiny_dataset, trained_classifier):
    scorer = quality.GeneratorQuality(tiny_dataset, trained_classifier, per_class=20)
    real, collapsed = scorer(_real_image_generator(tiny_dataset)), scorer(_real_image_generator(tiny_dataset, 1))
    assert collapsed["sample_diversity"] < 1e-3  # one image per class
    assert 0.8 < real["sample_diversity"] < 1.25
    assert collapsed["frechet_distance"] > 3 * real["frechet_distance"]
    one_class = scorer(_real_image_generator(tiny_dataset, collapsed_class=2))
    assert (one_class["least_diverse_class"], one_class["min_class_diversity"] < 1e-3) == (2, True)
    assert one_class["sample_diversity"] > 0.5
    assert "class 2 sample diversity 0.00" in quality.collapse_warning(one_class)


def test_features_are_the_input_of_the_logits_layer(tiny_dataset, trained_classifier):
    images = tiny_dataset.x_test[:8]
    feats = quality.features(quality.feature_extractor(trained_classifier), images)
    kernel, bias = trained_classifier.layers[-1].get_weights()
    logits = np.asarray(trained_classifier(images.astype(np.float32) / 255.0))
    assert feats.shape == (8, kernel.shape[0]) and feats.dtype == np.float64
    np.testing.assert_allclose(feats @ kernel + bias, logits, rtol=1e-4, atol=1e-4)
    no_dense = keras.Model(trained_classifier.input, keras.layers.Softmax()(trained_classifier.output))
    with pytest.raises(ValueError, match="Dense"):
        quality.feature_extractor(no_dense)


def _exact_moments(rng, n, mean, cov):
    """n points whose sample mean and (unbiased) covariance are exactly mean and cov."""
    x = rng.standard_normal((n, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # sample covariance I
    return x @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_is_zero_for_identical_sets():
    a = np.random.default_rng(0).standard_normal((300, 16)) @ np.diag(np.arange(1.0, 17.0)) + 5.0
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert quality.frechet_distance(a, a[::-1].copy()) == pytest.approx(0.0, abs=1e-8)  # order does not matter
    assert quality.frechet_distance(a, a + 0.1) == pytest.approx(16 * 0.01, rel=1e-8)


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(1)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.5, -1.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([2.0, 1.0, 0.25, 0.5])
    a, b = _exact_moments(rng, 400, mu_a, np.diag(var_a)), _exact_moments(rng, 250, mu_b, np.diag(var_b))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_non_commuting_covariances_matches_the_closed_form():
    # 2x2: the eigenvalues l1, l2 of S_a S_b give Tr (S_a S_b)^(1/2) = sqrt(l1 + l2 + 2 sqrt(l1 l2))
    #     = sqrt(Tr(S_a S_b) + 2 sqrt(det S_a det S_b))
    cov_a, cov_b = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([[1.0, -0.3], [-0.3, 3.0]])
    rng = np.random.default_rng(2)
    a, b = _exact_moments(rng, 300, np.zeros(2), cov_a), _exact_moments(rng, 300, np.array([1.0, 2.0]), cov_b)
    trace_root = np.sqrt(np.trace(cov_a @ cov_b) + 2 * np.sqrt(np.linalg.det(cov_a) * np.linalg.det(cov_b)))
    expected = 1.0 + 4.0 + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_symmetric():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32))
    b = rng.standard_normal((300, 32)) @ rng.standard_normal((32, 32)) + 0.5
    assert quality.frechet_distance(a, b) == pytest.approx(quality.frechet_distance(b, a), rel=1e-9)
    assert quality.frechet_distance(a, b) > 1.0


def test_frechet_distance_grows_as_one_set_collapses():
    rng = np.random.default_rng(4)
    cov = np.diag(np.linspace(0.5, 2.0, 8))
    real, other = _exact_moments(rng, 500, np.zeros(8), cov), rng.standard_normal((500, 8)) @ np.sqrt(cov)
    center = other.mean(0)
    distances = [quality.frechet_distance(real, center + t * (other - center)) for t in (1.0, 0.6, 0.3, 0.0)]
    assert distances[0] < 0.1 * distances[-1]
    assert all(d1 < d2 for d1, d2 in zip(distances, distances[1:]))
    assert distances[-1] == pytest.approx(np.trace(cov) + np.sum(center ** 2), rel=1e-9)  # one point: Tr S_a + mean


def test_diverse_but_wrong_class_generator_is_flagged(tiny_dataset, trained_classifier):
    shifted = np.roll(_class_means(tiny_dataset), 1, axis=0)  # every class draws the next class's images
    scores = quality.GeneratorQuality(tiny_dataset, trained_classifier, per_class=20)(
        _generator(tiny_dataset, shifted, noise_std=0.02))
    assert scores["gan_test_accuracy"] < 0.2
    assert quality.collapse_warning(scores) is None  # diverse: not a collapse, and not called one
    assert "not class-conditional yet: GAN-test accuracy" in quality.conditioning_note(scores)


def test_a_class_drawing_near_copies_is_flagged_even_when_the_mean_diversity_is_fine():
    # the CIFAR-10 Rob-GAN study run after 2 epochs: every class's row shows near-copies of one image
    scores = {"gan_test_accuracy": 0.696, "gan_test_reference_accuracy": 0.523, "sample_diversity": 0.41,
              "min_class_diversity": 0.24, "least_diverse_class": 4}
    assert "class 4 sample diversity 0.24" in quality.collapse_warning(scores)
    assert quality.conditioning_note(scores) is None  # the collapse is what is said
    assert quality.collapse_warning({**scores, "min_class_diversity": 0.36}) is None


def test_mean_pairwise_distance():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert quality.mean_pairwise_distance(pts) == np.float64((5 + 0 + 5) / 3)
