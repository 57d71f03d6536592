"""Run by test_distribute.py in a fresh process, as `reduce` or `train OUT_DIR`.

2 logical CPUs must be configured before TF starts, and one MirroredStrategy per process.
"""

import json
import sys

import keras
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from conftest import make_images  # noqa: E402
from robgan_tf import data, methods, models, trainer  # noqa: E402
from robgan_tf.averaging import WeightAverage  # noqa: E402
from robgan_tf.gan_training import FineTuner  # noqa: E402


def one_finetune_step(strategy, x, y):
    """Weight updates of one deterministic SGD step (eps 0, lam 0) under `strategy`, and the
    moves of the weights' average (decay 0.5: after one step it is halfway)."""
    keras.utils.set_random_seed(1)
    with strategy.scope():
        g = models.build_generator((16, 16, 1), 4, width=4, z_dim=8)
        d = models.build_discriminator((16, 16, 1), 4, width=4, depth=2)
        classifier = models.classifier_from(d)
        average = WeightAverage(classifier, 0.5)
        model = FineTuner(g, classifier, eps=0.0, pgd_steps=0, lam=0.0, average=average)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [v.numpy() for v in model.classifier.trainable_variables]
    averaged = [a.numpy() for a in average.averages]
    history = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history
    updates = [v.numpy() - b for v, b in zip(model.classifier.trainable_variables, before)]
    moves = [a.numpy() - b for a, b in zip(average.averages, averaged)]
    return updates + moves, history["loss"][-1]


if sys.argv[1] == "reduce":
    x, y = make_images(32, seed=3)
    x, y = data.to_float(x), tf.constant(y, tf.int32)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single, loss_single = one_finetune_step(tf.distribute.get_strategy(), x, y)
    double, loss_double = one_finetune_step(mirrored, x, y)
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "loss_single": float(loss_single),
                      "loss_double": float(loss_double),
                      "max_update": max(float(np.abs(a).max()) for a in single),
                      "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(single, double))}))
else:  # train OUT_DIR: a whole tiny run through trainer.train with --distribute mirrored
    train_x, train_y = make_images(128, seed=0)
    test_x, test_y = make_images(40, seed=1)
    dataset = data.Dataset("tiny", train_x, train_y, test_x, test_y)
    config = methods.config_for("tiny", "robgan", {"width": 4, "g_width": 4, "depth": 2,
              "batch_size": 32, "pgd_steps": 2, "eps": 0.1, "epochs": 1, "finetune_epochs": 1,
              "eval_examples": 40, "distribute": "mirrored", "ema_decay": 0.9, "g_ema_decay": 0.9,
              "projection": True})
    print(json.dumps(trainer.train(config, dataset, sys.argv[2], verbose=0)))
