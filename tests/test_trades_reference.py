"""TRADES checked against an independent computation from the paper's formula (issue 17, section 3).

TRADES (Zhang et al., ICML 2019) with the settings of the authors' code:

    L = mean_i [ CE(f(x_i), y_i) + beta * KL(p(x_i) || p(x'_i)) ],   KL(p || q) = sum_k p_k (log p_k - log q_k)

where the clean distribution p(x) is the target of the KL, and x' comes from sign-gradient ascent on
the KL summed over the batch, the model in inference mode, from x + 0.001 N(0, 1), each step
projected onto the L-inf eps-ball around x and then onto [0, 1]. In the outer loss (training mode)
the gradient flows through both p(x) and p(x').

The reference below is written from that description (numpy, or eager TF for gradients) and uses
nothing of robgan_tf but the model. Each comparison also checks that a wrong variant (KL direction
swapped, a projection left out, the clean distribution not differentiated) is told apart, so the
test can fail.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import losses, models
from robgan_tf.training import TRADES

BATCH, SHAPE, CLASSES, BETA = 8, (28, 28, 1), 10, 6.0

# (eps, step size, steps): the authors' MNIST and CIFAR-10 settings, and our MNIST study's attack
# (PGD-10, default step 2.5 * eps / steps).
SETTINGS = {
    "reference-mnist": (0.3, 0.01, 40),
    "reference-cifar10": (0.031, 0.007, 10),
    "ours-mnist": (0.3, 2.5 * 0.3 / 10, 10),
}


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return models.classifier_from(models.build_discriminator(SHAPE, CLASSES, width=8, depth=2))


@pytest.fixture(scope="module")
def batch():
    """A fixed batch of MNIST-shaped images. Pixels stay in [0.05, 0.95]: the reference does not
    clip its start x + 0.001 N(0, 1) to [0, 1] and ours does, so with no pixel at 0 or 1 the two
    starts are the same point (the projections onto [0, 1] are still active during the attack)."""
    rng = np.random.default_rng(17)
    x = rng.uniform(0.05, 0.95, (BATCH,) + SHAPE).astype(np.float32)
    y = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    noise = rng.standard_normal((BATCH,) + SHAPE).astype(np.float32)
    return x, y, noise


# ----------------------------------------------------------------------------------------------
# The reference, from the paper's formula.

def _log_softmax_np(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference_loss_np(y, clean_logits, adv_logits, beta, swap=False):
    """Per-example CE(f(x), y) + beta * sum_k p_k(x) (log p_k(x) - log p_k(x')), in float64.
    `swap` computes the wrong direction KL(p(x') || p(x)) instead."""
    log_p, log_q = _log_softmax_np(clean_logits), _log_softmax_np(adv_logits)
    ce = -log_p[np.arange(len(y)), y]
    if swap:
        log_p, log_q = log_q, log_p
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return ce + beta * kl


def reference_attack(model, x, x_start, eps, step_size, steps, swap=False, project_ball=True, project_box=True):
    """PGD on the KL, as in the authors' code: the target p(x) fixed, the KL summed over batch and
    classes, sign steps, then min/max onto [x - eps, x + eps], then clamp to [0, 1]. Model in
    inference mode. The flags make wrong variants, to show the comparison can fail.

    Near x the KL's input gradient is tiny (the KL is flat at x' = x), so a rounding difference can
    flip the sign of a near-zero gradient component and send the sign steps apart. The KL is
    therefore computed from log-softmaxes, the form that needs no log of a softmax: a softmax/xlogy
    form agreed on this batch too, but on real MNIST images it flipped 5 of 50,176 first-step signs."""
    x = tf.constant(x)
    log_p = tf.nn.log_softmax(model(x, training=False))
    x_adv = tf.constant(x_start)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            log_q = tf.nn.log_softmax(model(x_adv, training=False))
            if swap:
                kl = tf.reduce_sum(tf.exp(log_q) * (log_q - log_p))
            else:
                kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q))
        grad = tape.gradient(kl, x_adv)
        x_adv = x_adv + step_size * tf.sign(grad)
        if project_ball:
            x_adv = tf.minimum(tf.maximum(x_adv, x - eps), x + eps)
        if project_box:
            x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
    return x_adv.numpy()


def reference_outer_gradient(model, x, y, x_adv, beta, detach_clean=False):
    """The outer loss in training mode and its gradient w.r.t. the weights: CE on the clean logits
    plus beta times the KL with p(x) as target, differentiated through p(x) too (the authors' code
    does not detach it); `detach_clean` is the wrong variant."""
    with tf.GradientTape() as tape:
        clean = model(tf.constant(x), training=True)
        adv = model(tf.constant(x_adv), training=True)
        log_p = tf.nn.log_softmax(clean)
        log_q = tf.nn.log_softmax(adv)
        ce = -tf.gather(log_p, y, batch_dims=1)
        target = tf.stop_gradient(log_p) if detach_clean else log_p
        kl = tf.reduce_sum(tf.exp(target) * (target - log_q), -1)
        loss = tf.reduce_mean(ce + beta * kl)
    return float(loss), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


# ----------------------------------------------------------------------------------------------
# a. The loss.

def test_trades_loss_matches_the_formula_on_random_logits():
    rng = np.random.default_rng(0)
    clean = (3 * rng.standard_normal((BATCH, CLASSES))).astype(np.float32)
    adv = (3 * rng.standard_normal((BATCH, CLASSES))).astype(np.float32)
    y = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    ours = losses.trades_loss(tf.constant(y), tf.constant(clean), tf.constant(adv), BETA).numpy()
    expected = reference_loss_np(y, clean, adv, BETA)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    # The batch value the train step minimises: the mean over the batch.
    np.testing.assert_allclose(tf.nn.compute_average_loss(ours).numpy(), expected.mean(), rtol=1e-5)
    # The comparison tells the KL's direction apart.
    assert np.abs(reference_loss_np(y, clean, adv, BETA, swap=True) - expected).max() > 0.1


def test_trades_loss_matches_the_formula_on_the_model(classifier, batch):
    x, y, noise = batch
    eps, step_size, steps = SETTINGS["reference-mnist"]
    x_adv = reference_attack(classifier, x, x + 0.001 * noise, eps, step_size, steps)
    clean, adv = classifier(x, training=True).numpy(), classifier(x_adv, training=True).numpy()
    ours = losses.trades_loss(tf.constant(y), tf.constant(clean), tf.constant(adv), BETA).numpy()
    expected = reference_loss_np(y, clean, adv, BETA)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    kl = (expected - reference_loss_np(y, clean, adv, 0.0)) / BETA
    assert kl.min() > 1e-3, "the attack should have moved the prediction, or the KL term tests nothing"
    assert np.abs(reference_loss_np(y, clean, adv, BETA, swap=True) - expected).max() > 1e-3


# ----------------------------------------------------------------------------------------------
# b. The attack.

def _our_attack(classifier, x, y, x_start, eps, step_size, steps):
    """Our TRADES attack, called as TRADES.train_step calls it, from a fixed start."""
    model = TRADES(classifier, eps=eps, pgd_steps=steps, pgd_step_size=step_size, beta=BETA)
    x, y = tf.constant(x), tf.constant(y)
    clean = tf.stop_gradient(model._logits(x))
    seed = tf.constant([0, 0], tf.int64)
    return model.attack(x, y, tf.constant(eps, tf.float32), seed,
                        loss=lambda logits: losses.kl_divergence(clean, logits), x_init=tf.constant(x_start)).numpy()


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_trades_attack_matches_reference_pgd_on_the_kl(classifier, batch, setting):
    x, y, noise = batch
    eps, step_size, steps = SETTINGS[setting]
    start = x + 0.001 * noise
    ours = _our_attack(classifier, x, y, start, eps, step_size, steps)
    expected = reference_attack(classifier, x, start, eps, step_size, steps)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert np.abs(ours - x).max() <= eps + 1e-6 and ours.min() >= 0.0 and ours.max() <= 1.0
    # The comparison tells wrong attacks apart: the KL's direction swapped, either projection left out.
    for wrong in (dict(swap=True), dict(project_ball=False), dict(project_box=False)):
        if setting == "reference-cifar10" and "project_box" in wrong:
            continue  # 10 x 0.007 from pixels >= 0.05 never leaves [0, 1]
        variant = reference_attack(classifier, x, start, eps, step_size, steps, **wrong)
        assert np.abs(variant - ours).max() > 1e-3, f"the reference with {wrong} should differ"


# ----------------------------------------------------------------------------------------------
# c. The outer loss and its gradient, through a real train step.

def test_train_step_loss_and_gradient_match_the_reference(classifier, batch):
    """One TRADES.train_step with SGD at learning rate 1 moves the weights by minus the gradient.
    Its attack start is rebuilt from the step's seed, so the whole step can be recomputed by the
    reference: the attack, the loss and the gradient (through p(x) as well as p(x'))."""
    x, y, _ = batch
    eps, step_size, steps = SETTINGS["ours-mnist"]
    model = TRADES(classifier, eps=eps, pgd_steps=steps, pgd_step_size=step_size, beta=BETA)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    before = [v.numpy().copy() for v in classifier.trainable_variables]
    try:
        # The start train_step draws at its first step (optimizer iteration 0).
        s_attack = model.seeds(tf.constant(0, tf.int64), 3)[0]
        start = (x + 0.001 * tf.random.stateless_normal(x.shape, s_attack)).numpy()
        assert start.min() > 0.0 and start.max() < 1.0  # so the reference's unclipped start is ours
        x_adv = reference_attack(classifier, x, start, eps, step_size, steps)
        expected_loss, expected_grads = reference_outer_gradient(classifier, x, y, x_adv, BETA)
        _, detached_grads = reference_outer_gradient(classifier, x, y, x_adv, BETA, detach_clean=True)

        metrics = model.train_step((tf.constant(x), tf.constant(y)))
        steps_taken = [b - v.numpy() for b, v in zip(before, classifier.trainable_variables)]
    finally:
        for v, b in zip(classifier.trainable_variables, before):
            v.assign(b)

    assert float(metrics["loss"]) == pytest.approx(expected_loss, rel=1e-5)
    scale = max(np.abs(g).max() for g in expected_grads)
    for taken, grad in zip(steps_taken, expected_grads):
        np.testing.assert_allclose(taken, grad, rtol=1e-3, atol=1e-5 * scale)
    # The comparison tells apart a KL whose clean distribution is not differentiated.
    gap = max(np.abs(t - g).max() for t, g in zip(steps_taken, detached_grads))
    assert gap > 1e-2 * scale, "detaching p(x) in the KL should change the gradient measurably"
