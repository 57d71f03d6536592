import keras
import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import data, models
from robgan_tf.averaging import WeightAverage
from robgan_tf.callbacks import OverfitGuard
from robgan_tf.schedules import CyclicLR
from robgan_tf.gan_training import FineTuner, RobGAN
from robgan_tf.training import TRADES, AdversarialTraining, RandomStartFGSM


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
    model = RobGAN(g, d, models.classifier_from(d), eps=0.1, pgd_steps=3, real_rf_input=real_rf_input)
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
    model = RobGAN(g, d, models.classifier_from(d), eps=0.1, pgd_steps=1, n_dis=2)
    model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    x, y = _batch(tiny_dataset)
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(2), epochs=1, verbose=0)
    assert int(model.d_optimizer.iterations) == 4, "two D updates per step, on the two halves of the batch"
    assert int(model.g_optimizer.iterations) == 2
    assert model.trackers["g_loss"].result() > 0


class _CountingGenerator(keras.Model):
    """G, counting its forward passes."""

    def __init__(self, generator):
        super().__init__()
        self.generator, self.passes = generator, 0

    @property
    def input(self):
        return self.generator.input

    def call(self, inputs, training=False):
        self.passes += 1
        return self.generator(inputs, training=training)


def test_g_runs_forward_once_per_d_update_and_its_update_reuses_the_fakes(tiny_dataset):
    g, d = _models(tiny_dataset)
    counting = _CountingGenerator(g)
    model = RobGAN(counting, d, models.classifier_from(d), eps=0.1, pgd_steps=1, n_dis=2)
    model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    g0 = _weights(g)
    x, y = _batch(tiny_dataset)
    model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)
    assert counting.passes == 2, "one G forward pass per D update, none more for G's update"
    assert all(_changed(g0, g)), "G is still updated, through the fakes it drew for D"


def test_finetuning_changes_the_classifier_only(tiny_dataset):
    g, d = _models(tiny_dataset)
    model = FineTuner(g, models.classifier_from(d), eps=0.1, pgd_steps=2, lam=0.5)
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
    model = RobGAN(g, d, models.classifier_from(d), eps=0.3, pgd_steps=1, eps_warmup_steps=10)
    eps = [float(model.current_eps(tf.constant(s))) for s in (0, 4, 9, 50)]
    np.testing.assert_allclose(eps, [0.03, 0.15, 0.3, 0.3], rtol=1e-6)
    assert float(RobGAN(g, d, models.classifier_from(d), eps=0.3, pgd_steps=1).current_eps(tf.constant(0))) == pytest.approx(0.3)


BASELINES = {
    "pgd-at": lambda c, g=None, **kw: AdversarialTraining(c, g, eps=0.1, pgd_steps=3, **kw),
    "fgsm-rs": lambda c, g=None, **kw: RandomStartFGSM(c, g, eps=0.1, pgd_steps=1, pgd_step_size=0.125, **kw),
    "trades": lambda c, g=None, **kw: TRADES(c, g, eps=0.1, pgd_steps=3, beta=6.0, **kw),
}


@pytest.mark.parametrize("method", sorted(BASELINES))
@pytest.mark.parametrize("gen_ratio", [0.0, 0.25])
def test_baseline_step_updates_the_classifier_with_finite_metrics(tiny_dataset, method, gen_ratio):
    g, d = _models(tiny_dataset)
    classifier = models.classifier_from(d)
    model = BASELINES[method](classifier, g if gen_ratio else None, gen_ratio=gen_ratio)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    c0, g0 = _weights(classifier), _weights(g)
    history = model.fit(tf.data.Dataset.from_tensors(_batch(tiny_dataset)), epochs=1, verbose=0).history
    assert set(history) == set(type(model).metric_names)
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert all(_changed(c0, classifier)), "every classifier weight should move"
    assert not any(_changed(g0, g)), "a mixed-in generator stays frozen"


def test_generated_images_replace_the_asked_fraction_of_the_batch(tiny_dataset):
    g, d = _models(tiny_dataset)
    model = AdversarialTraining(models.classifier_from(d), g, eps=0.1, pgd_steps=1, gen_ratio=0.25)
    x, y = _batch(tiny_dataset)
    seeds = model.seeds(tf.constant(0), 2)
    mixed_x, mixed_y = model.mix_generated(x, y, *seeds)
    assert mixed_x.shape == x.shape and mixed_y.shape == y.shape
    np.testing.assert_array_equal(mixed_x[:12], x[4:])
    z, labels = model.sample_inputs(4, *seeds)
    np.testing.assert_array_equal(mixed_y[12:], labels)
    np.testing.assert_allclose(mixed_x[12:], g([z, labels], training=False), atol=1e-6)


def _guarded(classifier, x, y, average=None, drop=0.2):
    model = AdversarialTraining(classifier, eps=0.05, pgd_steps=1, pgd_step_size=0.0625, average=average)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.c_optimizer.build(classifier.trainable_variables)
    guard = OverfitGuard(x, y, eps=0.05, drop=drop)
    guard.set_model(model)
    return model, guard


def test_overfit_guard_stops_and_restores_the_previous_epochs_weights(tiny_dataset, trained_classifier):
    classifier = keras.models.clone_model(trained_classifier)
    classifier.set_weights(trained_classifier.get_weights())
    model, guard = _guarded(classifier, tiny_dataset.x_train[:64], tiny_dataset.y_train[:64])
    guard.on_train_begin()
    assert guard.previous >= 0.9  # robust at this small eps
    for v in classifier.trainable_variables:  # epoch 1 moves the weights a little
        v.assign(v * 1.001)
    epoch_1 = _weights(classifier)
    guard.on_epoch_end(0)
    assert guard.fired is None and not model.stop_training
    for v in classifier.trainable_variables:  # epoch 2: the collapse, a classifier robust to nothing
        v.assign(tf.random.normal(v.shape, stddev=0.01))
    guard.on_epoch_end(1)
    assert guard.fired["epoch"] == 2 and guard.fired["pgd10_accuracy"] < 0.5 and model.stop_training
    assert not any(_changed(epoch_1, classifier)), "epoch 1's weights come back, not the start's"


def test_overfit_guard_fires_on_a_drop_of_more_than_0_2_from_the_previous_epoch_only(tiny_dataset,
                                                                                   trained_classifier):
    classifier = keras.models.clone_model(trained_classifier)
    average = WeightAverage(classifier, 0.9)
    model, guard = _guarded(classifier, tiny_dataset.x_train[:8], tiny_dataset.y_train[:8], average)
    accuracies = iter([0.0, 0.9, 0.75, 0.6, 0.42, 0.2])  # the start, then epochs 1-5
    guard.check = lambda: (1.0, next(accuracies))
    guard.on_train_begin()
    logs = []  # each epoch's check goes to its row
    for epoch in range(4):  # rises, then falls by 0.15-0.18 an epoch (kept), to below half the best
        for a in average.averages:
            a.assign(tf.fill(a.shape, float(epoch)))
        logs.append({})
        guard.on_epoch_end(epoch, logs[-1])
        assert guard.fired is None and not model.stop_training
    for a in average.averages:
        a.assign(tf.fill(a.shape, 9.0))
    logs.append({})
    guard.on_epoch_end(4, logs[-1])  # 0.42 -> 0.2: more than 0.2 below the previous epoch
    assert logs == [{"guard_pgd10_acc": a} for a in (0.9, 0.75, 0.6, 0.42, 0.2)]
    assert guard.fired == {"epoch": 5, "step": 0, "pgd10_accuracy": 0.2, "previous": 0.42} and model.stop_training
    assert all(np.all(a.numpy() == 3.0) for a in average.averages), "the average of epoch 4 comes back too"


def test_overfit_guard_records_at_train_end_and_checks_once_per_process(tiny_dataset, trained_classifier):
    recorded = []
    _, guard = _guarded(keras.models.clone_model(trained_classifier), tiny_dataset.x_train[:8],
                        tiny_dataset.y_train[:8])
    guard.record = recorded.append
    accuracies = iter([0.9, 0.1])
    guard.check = lambda: (1.0, next(accuracies))
    guard.on_train_begin()
    guard.on_train_begin()  # a resumed epoch's second fit: no new baseline (it would take 0.1)
    guard.on_epoch_end(0)
    assert guard.fired["previous"] == 0.9 and recorded == [], "recorded only after the epoch's checkpoint"
    guard.on_train_end()
    assert recorded == [guard.fired]


def test_overfit_guard_attacks_a_float16_classifier_in_float32(tiny_dataset, float16_classifier):
    model, guard = _guarded(float16_classifier, tiny_dataset.x_train[:32], tiny_dataset.y_train[:32], drop=1.0)
    guard.on_train_begin()
    assert guard.check.attacked.dtype_policy.compute_dtype == "float32"
    for v in float16_classifier.trainable_variables:
        v.assign(v * 0.5)
    guard.on_epoch_end(0)  # each check attacks the classifier's current weights
    for a, b in zip(guard.check.attacked.get_weights(), float16_classifier.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_cyclic_learning_rate_is_a_triangle_peaking_at_two_fifths():
    schedule = CyclicLR(0.2, 100)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 20, 40, 70, 100)], [0, 0.1, 0.2, 0.1, 0], atol=1e-7)
