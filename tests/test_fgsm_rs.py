"""FGSM-RS: one step of 1.25 eps from x + U(-eps, eps), the gradient taken at that start clipped to [0, 1]
(the reference's CIFAR-10 script) or not (its MNIST script)."""

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import config as cfg
from robgan_tf import data, methods, models
from robgan_tf.training import RandomStartFGSM

EPS = 0.1


@pytest.fixture(params=[False, True], ids=["tf.function", "XLA"])
def stage(tiny_dataset, request):
    keras.utils.set_random_seed(0)
    discriminator = models.build_discriminator(tiny_dataset.image_shape, tiny_dataset.num_classes, width=8, depth=2)
    model = RandomStartFGSM(models.classifier_from(discriminator), eps=EPS, pgd_steps=1, pgd_step_size=1.25 * EPS,
                            attack_jit=request.param, clip_start=False)
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


@pytest.mark.parametrize("clip_start", [False, True])
def test_the_step_is_taken_from_the_random_start_clipped_or_not(stage, tiny_dataset, clip_start):
    stage.clip_start = clip_start
    x = data.to_float(tiny_dataset.x_train[:16])
    x = tf.concat([tf.zeros_like(x[:, :, :4]), x[:, :, 4:]], axis=2)  # a black band, as MNIST's background
    y = tf.constant(tiny_dataset.y_train[:16], tf.int32)
    seed = tf.constant([5, 6], tf.int64)
    start = x + tf.random.stateless_uniform(tf.shape(x), seed, -EPS, EPS)
    unclipped = _signed_step_from(stage, x, y, start)
    clipped = _signed_step_from(stage, x, y, tf.clip_by_value(start, 0.0, 1.0))
    assert not np.allclose(unclipped.numpy(), clipped.numpy())  # the two starts give different steps here
    expected = clipped if clip_start else unclipped
    attacked = stage.attack(x, y, tf.constant(EPS), seed)
    np.testing.assert_allclose(attacked.numpy(), expected.numpy(), atol=1e-6)
    assert np.abs(attacked.numpy() - x.numpy()).max() <= EPS + 1e-6
    assert attacked.numpy().min() >= 0.0 and attacked.numpy().max() <= 1.0


def test_on_mnist_it_defaults_to_the_reference_recipe_and_flags_still_override_it():
    config = methods.config_for("mnist", "fgsm-rs")
    assert (config.batch_size, config.d_lr, config.beta_1, config.eps_warmup_epochs, config.epochs,
            config.fgsm_clip_start) == (100, 5e-3, 0.9, 0.0, 10, False)
    assert config.pgd_steps == 1 and config.pgd_step_size == pytest.approx(1.25 * 0.3)
    assert methods.config_for("mnist", "fgsm-rs", {"d_lr": 1e-3}, explicit=("d_lr",)).d_lr == 1e-3
    assert methods.config_for("mnist", "pgd-at").batch_size == 64  # the recipe is fgsm-rs's own
    assert methods.config_for("cifar10", "fgsm-rs").fgsm_clip_start  # the reference's CIFAR-10 script clips it


def test_the_start_setting_is_fgsm_rs_own():
    with pytest.raises(cfg.ConfigError, match="--fgsm-clip-start does not apply to --method pgd-at"):
        methods.config_for("mnist", "pgd-at", {"fgsm_clip_start": False}, explicit=("fgsm_clip_start",))


def test_the_registry_hands_the_start_setting_to_the_step(tiny_dataset):
    keras.utils.set_random_seed(0)
    discriminator = models.build_discriminator(tiny_dataset.image_shape, tiny_dataset.num_classes, width=8, depth=2)
    parts = SimpleNamespace(classifier=models.classifier_from(discriminator), generator=None, average=None)
    stage = methods.get("fgsm-rs").stages[0]
    for clip_start in (False, True):
        config = methods.config_for("tiny", "fgsm-rs", {"fgsm_clip_start": clip_start})
        model = stage.build(stage.step_class, parts, {"c_optimizer": keras.optimizers.Adam(1e-3)}, config, 0)
        assert isinstance(model, RandomStartFGSM) and model.clip_start is clip_start
