"""N-FGSM: one step of eps from noise in ±k eps (k = 2), not projected back to the eps-ball."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import config as cfg
from robgan_tf import data, methods, models
from robgan_tf.training import NoiseFGSM

EPS = 0.1


@pytest.fixture()
def stage(tiny_dataset):
    keras.utils.set_random_seed(0)
    discriminator = models.build_discriminator(tiny_dataset.image_shape, tiny_dataset.num_classes, width=8, depth=2)
    model = NoiseFGSM(models.classifier_from(discriminator), eps=EPS, pgd_steps=1, pgd_step_size=EPS)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


@pytest.mark.parametrize("noise", [2.0, 1.0])
def test_the_attack_is_one_signed_step_of_eps_from_noise_of_k_eps(stage, tiny_dataset, noise):
    stage.noise = noise
    x, y = data.to_float(tiny_dataset.x_train[:16]), tf.constant(tiny_dataset.y_train[:16], tf.int32)
    seed = tf.constant([5, 6], tf.int64)
    # written out from the paper: x0 = clip(x + U(-k eps, k eps)), x' = clip(x0 + eps sign(grad CE(f(x0), y)))
    start = tf.clip_by_value(x + tf.random.stateless_uniform(tf.shape(x), seed, -noise * EPS, noise * EPS), 0.0, 1.0)
    with tf.GradientTape() as tape:
        tape.watch(start)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, stage.classifier(start,
                                                                                                 training=False)))
    expected = tf.clip_by_value(start + EPS * tf.sign(tape.gradient(loss, start)), 0.0, 1.0)
    attacked = stage.attack(x, y, tf.constant(EPS), seed)
    np.testing.assert_allclose(attacked.numpy(), expected.numpy(), atol=1e-6)
    distance = np.abs(attacked.numpy() - x.numpy()).max()
    assert EPS < distance <= (noise + 1) * EPS + 1e-6  # beyond the eps-ball: not projected back
    assert distance > noise * EPS  # the noise reached its bound somewhere (a fixed ±2 eps would pass k = 1 above)
    assert attacked.numpy().min() >= 0.0 and attacked.numpy().max() <= 1.0


def test_a_step_trains_the_classifier_and_the_method_fixes_its_step(stage, tiny_dataset):
    before = [v.numpy().copy() for v in stage.classifier.trainable_variables]
    logs = stage.train_step((data.to_float(tiny_dataset.x_train[:16]), tf.constant(tiny_dataset.y_train[:16],
                                                                                  tf.int32)))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, stage.classifier.trainable_variables))
    config = methods.config_for("tiny", "n-fgsm", {"eps": 0.2})
    assert (config.pgd_steps, config.pgd_step_size, config.nfgsm_noise) == (1, 0.2, 2.0)
    # the noise is N-FGSM's alone, as beta is TRADES'
    with pytest.raises(cfg.ConfigError, match="--nfgsm-noise does not apply to --method pgd-at"):
        methods.config_for("tiny", "pgd-at", {"nfgsm_noise": 1.0}, explicit=("nfgsm_noise",))
    with pytest.raises(cfg.ConfigError, match="--beta does not apply to --method n-fgsm: it is TRADES' weight"):
        methods.config_for("tiny", "n-fgsm", {"beta": 1.0}, explicit=("beta",))
    assert methods.config_for("tiny", "n-fgsm", {"nfgsm_noise": 1.0}, explicit=("nfgsm_noise",)).nfgsm_noise == 1.0
    with pytest.raises(cfg.ConfigError, match="--pgd-steps does not apply to --method n-fgsm"):
        methods.config_for("tiny", "n-fgsm", {"pgd_steps": 3}, explicit=("pgd_steps",))
