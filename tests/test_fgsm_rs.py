"""FGSM-RS: one step of 1.25 eps from x + U(-eps, eps), the gradient taken at that start unclipped."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import data, methods, models
from robgan_tf.training import RandomStartFGSM

EPS = 0.1


@pytest.fixture(params=[False, True], ids=["tf.function", "XLA"])
def stage(tiny_dataset, request):
    keras.utils.set_random_seed(0)
    discriminator = models.build_discriminator(tiny_dataset.image_shape, tiny_dataset.num_classes, width=8, depth=2)
    model = RandomStartFGSM(models.classifier_from(discriminator), eps=EPS, pgd_steps=1, pgd_step_size=1.25 * EPS,
                            attack_jit=request.param)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def _signed_step_from(stage, x, y, start):
    """The reference code's step written out: clip(start + 1.25 eps sign(grad CE(f(start), y))) to the ball and [0, 1]."""
    with tf.GradientTape() as tape:
        tape.watch(start)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, stage.classifier(start,
                                                                                                 training=False)))
    stepped = start + 1.25 * EPS * tf.sign(tape.gradient(loss, start))
    return tf.clip_by_value(tf.clip_by_value(stepped, x - EPS, x + EPS), 0.0, 1.0)


def test_the_step_is_taken_from_the_unclipped_random_start(stage, tiny_dataset):
    x = data.to_float(tiny_dataset.x_train[:16])
    x = tf.concat([tf.zeros_like(x[:, :, :4]), x[:, :, 4:]], axis=2)  # a black band, as MNIST's background
    y = tf.constant(tiny_dataset.y_train[:16], tf.int32)
    seed = tf.constant([5, 6], tf.int64)
    start = x + tf.random.stateless_uniform(tf.shape(x), seed, -EPS, EPS)
    expected = _signed_step_from(stage, x, y, start)
    clipped_start = _signed_step_from(stage, x, y, tf.clip_by_value(start, 0.0, 1.0))
    assert not np.allclose(expected.numpy(), clipped_start.numpy())  # the two starts give different steps here
    attacked = stage.attack(x, y, tf.constant(EPS), seed)
    np.testing.assert_allclose(attacked.numpy(), expected.numpy(), atol=1e-6)
    assert np.abs(attacked.numpy() - x.numpy()).max() <= EPS + 1e-6
    assert attacked.numpy().min() >= 0.0 and attacked.numpy().max() <= 1.0


def test_the_registered_method_uses_it():
    assert methods.get("fgsm-rs").stages[0].step_class is RandomStartFGSM


def test_on_mnist_it_defaults_to_the_reference_recipe_and_flags_still_override_it():
    config = methods.config_for("mnist", "fgsm-rs")
    assert (config.batch_size, config.d_lr, config.beta_1, config.eps_warmup_epochs, config.epochs) == (
        100, 5e-3, 0.9, 0.0, 10)
    assert config.pgd_steps == 1 and config.pgd_step_size == pytest.approx(1.25 * 0.3)
    assert methods.config_for("mnist", "fgsm-rs", {"d_lr": 1e-3}, explicit=("d_lr",)).d_lr == 1e-3
    assert methods.config_for("mnist", "pgd-at").batch_size == 64  # the recipe is fgsm-rs's own
