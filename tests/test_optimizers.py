"""A baseline's optimizer: Adam by default, or SGD with momentum (--classifier-optimizer sgd); and its L2 weight decay."""

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import config as cfg
from robgan_tf import data, methods, models


def _classifier(tiny_dataset):
    keras.utils.set_random_seed(0)
    discriminator = models.build_discriminator(tiny_dataset.image_shape, tiny_dataset.num_classes, width=8, depth=2)
    return models.classifier_from(discriminator)


def _stage(tiny_dataset, method, settings):
    """The method's one training stage built through the registry, as the trainer builds it."""
    config = methods.config_for("tiny", method, settings, explicit=tuple(settings))
    spec = methods.get(method)
    parts = SimpleNamespace(classifier=_classifier(tiny_dataset), generator=None, average=None)
    optimizers = spec.optimizers(config, parts, {"train": 10})
    stage = spec.stages[0]
    return stage.build(stage.step_class, parts, optimizers, config, 0)


def _one_step(model, tiny_dataset):
    """The classifier's weights before and after one train step, and the step's metrics."""
    before = [v.numpy().copy() for v in model.classifier.trainable_variables]
    logs = model.train_step((data.to_float(tiny_dataset.x_train[:16]), tf.constant(tiny_dataset.y_train[:16],
                                                                                   tf.int32)))
    return before, [v.numpy() for v in model.classifier.trainable_variables], logs


@pytest.mark.parametrize("method", ["pgd-at", "trades", "n-fgsm"])  # fgsm-rs: its cyclic rate is 0 at step 0
def test_sgd_with_momentum_trains_a_baseline_and_weight_decay_adds_lambda_w_to_its_gradient(tiny_dataset, method):
    lr, decay = 0.05, 0.01
    sgd = {"classifier_optimizer": "sgd", "momentum": 0.8, "d_lr": lr, "eps_warmup_epochs": 0.0}
    plain = _stage(tiny_dataset, method, sgd)
    assert isinstance(plain.c_optimizer, keras.optimizers.SGD) and plain.c_optimizer.momentum == pytest.approx(0.8)
    w0, w_plain, logs = _one_step(plain, tiny_dataset)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert any(not np.array_equal(a, b) for a, b in zip(w0, w_plain))
    # the same first step with L2 decay: the same gradient plus decay * w, so the weights move a further -lr*decay*w
    # (the step's learning rate is the schedule's at step 0)
    decayed = _stage(tiny_dataset, method, {**sgd, "weight_decay": decay})
    step_lr = float(keras.ops.convert_to_numpy(decayed.c_optimizer.learning_rate))
    _, w_decayed, _ = _one_step(decayed, tiny_dataset)
    for w, a, b in zip(w0, w_plain, w_decayed):
        np.testing.assert_allclose(b - a, -step_lr * decay * w, atol=1e-6)
    assert step_lr > 0 and any(np.abs(w).max() > 0.1 for w in w0)  # the check above is not of zeros


def test_adam_stays_the_default(tiny_dataset):
    assert isinstance(_stage(tiny_dataset, "pgd-at", {}).c_optimizer, keras.optimizers.Adam)


def test_sgd_settings_are_refused_where_they_cannot_apply():
    with pytest.raises(cfg.ConfigError, match="--classifier-optimizer does not apply to --method robgan"):
        methods.config_for("tiny", "robgan", {"classifier_optimizer": "sgd"}, explicit=("classifier_optimizer",))
    with pytest.raises(cfg.ConfigError, match="--weight-decay does not apply to --method cgan"):
        methods.config_for("tiny", "cgan", {"weight_decay": 1e-4}, explicit=("weight_decay",))
    with pytest.raises(cfg.ConfigError, match="--momentum needs --classifier-optimizer sgd"):
        methods.config_for("tiny", "pgd-at", {"momentum": 0.5}, explicit=("momentum",))
    with pytest.raises(cfg.ConfigError, match="--beta-1 is Adam's; --classifier-optimizer sgd has --momentum"):
        methods.config_for("tiny", "pgd-at", {"classifier_optimizer": "sgd", "beta_1": 0.9},
                           explicit=("classifier_optimizer", "beta_1"))
    with pytest.raises(cfg.ConfigError, match="--classifier-optimizer .rmsprop.: use one of adam, sgd"):
        methods.config_for("tiny", "pgd-at", {"classifier_optimizer": "rmsprop"}, explicit=("classifier_optimizer",))
