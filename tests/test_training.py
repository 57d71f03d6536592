import keras
import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import data, models
from robgan_tf.training import FineTuner, RobGAN


def _models(ds, spectral_norm="head"):
    g = models.build_generator(ds.image_shape, ds.num_classes, width=8, z_dim=16)
    d = models.build_discriminator(ds.image_shape, ds.num_classes, width=8, depth=2, spectral_norm=spectral_norm)
    return g, d


def _batch(ds, n=16):
    return data.to_float(ds.x_train[:n]), tf.constant(ds.y_train[:n], tf.int32)


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _changed(before, model):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]


@pytest.mark.parametrize("jit_compile, real_rf_input", [(False, "adversarial"), (True, "adversarial"),
                                                         (False, "clean")], ids=["tf.function", "xla", "clean-rf"])
def test_robgan_step_updates_both_models_with_finite_metrics(tiny_dataset, jit_compile, real_rf_input):
    g, d = _models(tiny_dataset)
    model = RobGAN(g, d, eps=0.1, pgd_steps=3, real_rf_input=real_rf_input)
    model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3),
                  jit_compile=jit_compile)
    g0, d0 = _weights(g), _weights(d)
    x, y = _batch(tiny_dataset)
    history = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history
    assert set(history) == set(RobGAN.metric_names)
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert all(_changed(d0, d)), "every discriminator weight should move"
    assert all(_changed(g0, g)), "every generator weight should move"


def test_n_dis_makes_n_discriminator_updates_per_generator_update(tiny_dataset):
    g, d = _models(tiny_dataset)
    model = RobGAN(g, d, eps=0.1, pgd_steps=1, n_dis=2)
    model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    x, y = _batch(tiny_dataset)
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(2), epochs=1, verbose=0)
    assert int(model.d_optimizer.iterations) == 4, "two D updates per step, on the two halves of the batch"
    assert int(model.g_optimizer.iterations) == 2
    assert model.trackers["g_loss"].result() > 0


def test_finetuning_changes_the_classifier_only(tiny_dataset):
    g, d = _models(tiny_dataset)
    model = FineTuner(g, d, eps=0.1, pgd_steps=2, lam=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    g0, d0 = _weights(g), _weights(d)
    bn0 = [v.numpy().copy() for v in g.non_trainable_variables]
    history = model.fit(tf.data.Dataset.from_tensors(_batch(tiny_dataset)), epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert not any(_changed(g0, g)), "G must stay frozen"
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(bn0, g.non_trainable_variables)), \
        "G's batch-norm statistics must stay frozen too"
    moved = dict(zip([v.path for v in d.trainable_variables], _changed(d0, d)))
    assert not any(m for p, m in moved.items() if p.startswith("adv/")), "the real/fake head is not fine-tuned"
    assert all(m for p, m in moved.items() if not p.startswith("adv/"))


def test_eps_warmup_ramps_linearly_to_target(tiny_dataset):
    g, d = _models(tiny_dataset)
    model = RobGAN(g, d, eps=0.3, pgd_steps=1, eps_warmup_steps=10)
    eps = [float(model.current_eps(tf.constant(s))) for s in (0, 4, 9, 50)]
    np.testing.assert_allclose(eps, [0.03, 0.15, 0.3, 0.3], rtol=1e-6)
    assert float(RobGAN(g, d, eps=0.3, pgd_steps=1).current_eps(tf.constant(0))) == pytest.approx(0.3)
