import numpy as np
import tensorflow as tf

from robgan_tf import evaluation
from robgan_tf.attacks import pgd


def test_pgd_stays_in_eps_ball_and_pixel_range(trained_classifier, tiny_dataset):
    x = tiny_dataset.x_test[:64].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:64].astype(np.int32)
    eps = 8 / 255
    x_adv = pgd(lambda a: trained_classifier(a, training=False), x, y, eps, 10, 2.5 * eps / 10,
                tf.constant([1, 2], tf.int64)).numpy()
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() > eps / 2  # it did move


def test_pgd_lowers_accuracy_of_a_trained_model(trained_classifier, tiny_dataset):
    x, y = tiny_dataset.x_test, tiny_dataset.y_test
    clean = evaluation.accuracy(trained_classifier, x, y)
    robust = evaluation.pgd_accuracy(trained_classifier, x, y, eps=0.3, steps=20)
    assert clean >= 0.95
    assert robust <= clean - 0.5


def test_pgd_with_zero_eps_is_the_identity(trained_classifier, tiny_dataset):
    x = tiny_dataset.x_test[:8].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:8].astype(np.int32)
    x_adv = pgd(lambda a: trained_classifier(a, training=False), x, y, 0.0, 5, 0.0, tf.constant([0, 0], tf.int64))
    np.testing.assert_array_equal(x_adv.numpy(), x)


def test_pgd_on_a_float16_model_stays_float32_and_moves(tiny_dataset):
    import keras

    from robgan_tf import models
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        classifier = models.classifier_from(models.build_discriminator(tiny_dataset.image_shape, 4, width=4, depth=2))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = tiny_dataset.x_test[:16].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:16].astype(np.int32)
    x_adv = pgd(lambda a: classifier(a, training=False), x, y, 0.1, 5, 0.05, tf.constant([3, 4], tf.int64),
                loss_scale=1024.0)
    assert x_adv.dtype == tf.float32
    moved = np.abs(x_adv.numpy() - x)
    assert moved.max() <= 0.1 + 1e-6 and moved.mean() > 0.05, "float16 input gradients must not vanish"
