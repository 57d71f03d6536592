"""A baseline's optimizer: Adam by default, or SGD with momentum and weight decay (--classifier-optimizer sgd)."""

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


@pytest.mark.parametrize("method", ["pgd-at", "trades"])
def test_sgd_with_momentum_and_weight_decay_trains_a_baseline(tiny_dataset, method):
    model = _stage(tiny_dataset, method, {"classifier_optimizer": "sgd", "momentum": 0.8, "weight_decay": 5e-4,
                                          "d_lr": 0.05})
    optimizer = model.c_optimizer
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert (optimizer.momentum, optimizer.weight_decay) == (pytest.approx(0.8), pytest.approx(5e-4))
    before = [v.numpy().copy() for v in model.classifier.trainable_variables]
    logs = model.train_step((data.to_float(tiny_dataset.x_train[:16]), tf.constant(tiny_dataset.y_train[:16],
                                                                                   tf.int32)))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.classifier.trainable_variables))


def test_adam_stays_the_default(tiny_dataset):
    assert isinstance(_stage(tiny_dataset, "pgd-at", {}).c_optimizer, keras.optimizers.Adam)


def test_sgd_settings_are_refused_where_they_cannot_apply():
    with pytest.raises(cfg.ConfigError, match="--classifier-optimizer does not apply to --method robgan"):
        methods.config_for("tiny", "robgan", {"classifier_optimizer": "sgd"}, explicit=("classifier_optimizer",))
    with pytest.raises(cfg.ConfigError, match="--weight-decay does not apply to --method cgan"):
        methods.config_for("tiny", "cgan", {"weight_decay": 1e-4}, explicit=("weight_decay",))
    with pytest.raises(cfg.ConfigError, match="--momentum needs --classifier-optimizer sgd"):
        methods.config_for("tiny", "pgd-at", {"momentum": 0.5}, explicit=("momentum",))
    with pytest.raises(cfg.ConfigError, match="--classifier-optimizer .rmsprop.: use one of adam, sgd"):
        methods.config_for("tiny", "pgd-at", {"classifier_optimizer": "rmsprop"}, explicit=("classifier_optimizer",))
