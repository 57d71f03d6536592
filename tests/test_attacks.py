import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import attacks, evaluation
from robgan_tf.config import AttackSettings
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
    result = evaluation.evaluate(evaluation.inference_fn(trained_classifier), x, y, [0.3], attack=evaluation.PGD(),
                                 verbose=False)
    assert result["clean_accuracy"] >= 0.95
    assert result["robust_accuracy"]["pgd-20"]["0.3"] <= result["clean_accuracy"] - 0.5


@pytest.mark.parametrize("attack", ["pgd", "apgd-ce", "apgd-t", "square", "autoattack"])
def test_each_attack_breaks_a_plain_model_at_8_over_255(color_classifier, attack):
    model, x, y = color_classifier
    settings = AttackSettings(square_queries=1000, apgd_targets=3)
    result = evaluation.evaluate(evaluation.inference_fn(model), x, y, [8 / 255],
                                 attack=evaluation.attack_named(attack, settings), settings=settings, verbose=False)
    assert result["clean_accuracy"] >= 0.9
    name = "pgd-20" if attack == "pgd" else attack
    assert result["robust_accuracy"][name]["0.0313725"] <= 0.05
    x_adv = result["adversarial"]["0.0313725"]
    x_float = x.astype(np.float32) / 255.0
    assert np.abs(x_adv - x_float).max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    fooled = ~result["robust_examples"][name]["0.0313725"] & (evaluation.Evaluator(
        evaluation.inference_fn(model), verbose=False).predict(x_float) == y)
    assert np.abs(x_adv[fooled] - x_float[fooled]).max() > 4 / 255  # the counted images really moved


def test_apgd_and_square_stay_in_the_ball_where_they_fail(trained_classifier, tiny_dataset):
    """On a model they cannot break at this eps, every iterate must still respect the ball and [0, 1]."""
    x = tiny_dataset.x_test[:32].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:32].astype(np.int32)
    logits = lambda a: trained_classifier(a, training=False)  # noqa: E731
    seed = tf.constant([5, 6], tf.int64)
    for x_adv in (attacks.apgd(logits, x, y, 0.05, 30, seed),
                  attacks.apgd(logits, x, y, 0.05, 30, seed, target=(y + 1) % 4),
                  attacks.square(logits, x, y, 0.05, 200, seed)):
        moved = np.abs(x_adv.numpy() - x)
        assert moved.max() <= 0.05 + 1e-6 and moved.max() > 0.04
        assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0


def test_square_window_schedule_scales_to_the_query_budget():
    def side(i, n_queries):
        return int(attacks._square_size(tf.constant(i), 0.8, 28, 28, tf.constant(n_queries)))

    assert [side(i, 10000) for i in (0, 11, 9000)] == [25, 18, 1]  # sqrt(p * 784), p = 0.8 / 2^halvings
    assert all(side(i, 1000) == side(10 * i, 10000) for i in range(0, 1000, 7))
    assert side(999, 1000) == 1  # a 1,000-query run ends on the smallest windows too


def test_evaluator_runs_square_in_pieces_on_the_whole_budget_schedule(trained_classifier, tiny_dataset,
                                                                        monkeypatch):
    calls, real = [], attacks.square

    def spy(*args, **kwargs):
        calls.append((int(kwargs["first_iteration"]), int(kwargs["n_queries"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(attacks, "square", spy)
    settings = AttackSettings(square_queries=600, batch_size=64)
    evaluator = evaluation.Evaluator(evaluation.inference_fn(trained_classifier), settings, verbose=False)
    x = tiny_dataset.x_test[:32].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:32].astype(np.int32)
    tf.config.run_functions_eagerly(True)  # so that the spy sees every call, not one trace
    try:
        evaluator.run(evaluation.Square(600), x, y, 0.02, np.ones(32, bool))  # too small an eps to fool all early
    finally:
        tf.config.run_functions_eagerly(False)
    assert calls == [(0, 600), (250, 600), (500, 600)]


def test_attack_losses():
    logits = tf.constant([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = tf.constant([0, 2])
    np.testing.assert_allclose(attacks.margin(logits, y), [1.0 - 3.0, 2.0 - 1.0])
    # targeted DLR for target 1: (z_t - z_y) / (z_top1 - (z_top3 + z_top4) / 2)
    np.testing.assert_allclose(attacks.targeted_dlr(logits, y, tf.constant([1, 1])),
                               [(1 - 3) / (3 - (0 - 1) / 2), (2 - 1) / (2 - (0.5 + 0) / 2)], rtol=1e-6)


def test_pgd_with_zero_eps_is_the_identity(trained_classifier, tiny_dataset):
    x = tiny_dataset.x_test[:8].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:8].astype(np.int32)
    x_adv = pgd(lambda a: trained_classifier(a, training=False), x, y, 0.0, 5, 0.0, tf.constant([0, 0], tf.int64))
    np.testing.assert_array_equal(x_adv.numpy(), x)


def test_pgd_on_a_float16_model_stays_float32_and_moves(tiny_dataset, float16_classifier):
    classifier = float16_classifier
    x = tiny_dataset.x_test[:16].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:16].astype(np.int32)
    x_adv = pgd(lambda a: classifier(a, training=False), x, y, 0.1, 5, 0.05, tf.constant([3, 4], tf.int64),
                loss_scale=1024.0)
    assert x_adv.dtype == tf.float32
    moved = np.abs(x_adv.numpy() - x)
    assert moved.max() <= 0.1 + 1e-6 and moved.mean() > 0.05, "float16 input gradients must not vanish"


@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_drops_fooled_examples_without_changing_any_result(trained_classifier, tiny_dataset, targeted):
    """APGD with `drop_fooled` sends fewer examples through the model and returns the same images:
    each fooled example's first misclassified iterate, each other one's start."""
    x = tiny_dataset.x_test[:64].astype(np.float32) / 255.0
    y = tiny_dataset.y_test[:64].astype(np.int32)
    seen = tf.Variable(0)

    def counting_logits(images):
        seen.assign_add(tf.shape(images)[0])
        return trained_classifier(images, training=False)

    target = tf.constant((y + 1) % 4) if targeted else None
    run = tf.function(lambda drop: attacks.apgd(counting_logits, x, y, 0.3, 40, tf.constant([3, 4], tf.int64),
                                                target=target, drop_fooled=drop), reduce_retracing=True)
    results, passes = {}, {}
    for drop in (False, True):
        seen.assign(0)
        results[drop] = run(drop).numpy()
        passes[drop] = int(seen.numpy())
    predict = evaluation.Evaluator(evaluation.inference_fn(trained_classifier), verbose=False).predict
    fooled = predict(results[False]) != y
    assert 0 < fooled.sum() < len(y)  # some but not all: both paths matter
    np.testing.assert_array_equal(predict(results[True]) != y, fooled)
    np.testing.assert_allclose(results[True], results[False], atol=1e-6)
    assert passes[False] == 41 * len(y)  # every example: the start's pass and one per iteration
    assert passes[True] < passes[False] - 20 * fooled.sum()  # most fooled examples left early
