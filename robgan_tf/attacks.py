"""L-infinity attacks on classifiers that map images in [0, 1] to logits."""

import tensorflow as tf


def default_step_size(eps, steps):
    """PGD's usual step: 2.5 * eps / steps, enough to cross the ball and come back."""
    return 2.5 * eps / max(steps, 1)


def pgd(logits_fn, x, y, eps, steps, step_size, seed, loss_scale=1.0):
    """Projected gradient ascent on the cross-entropy from a uniform random start in the eps-ball.

    `logits_fn` must run the model in inference mode; `seed` is a stateless seed of shape [2].
    The perturbation and the loss are float32 whatever the model computes in; under float16,
    pass a `loss_scale` (e.g. 1024) so input gradients do not underflow (steps use their sign).
    The result stays within `eps` of x (L-infinity) and in [0, 1], and carries no gradient.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    eps = tf.cast(eps, tf.float32)
    lower, upper = tf.maximum(x - eps, 0.0), tf.minimum(x + eps, 1.0)

    def step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = tf.cast(logits_fn(x_adv), tf.float32)
            loss = loss_scale * tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grad = tape.gradient(loss, x_adv)
        return i + 1, tf.clip_by_value(x_adv + step_size * tf.sign(grad), lower, upper)

    x_adv = tf.clip_by_value(x + tf.random.stateless_uniform(tf.shape(x), seed, -eps, eps), lower, upper)
    _, x_adv = tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), x_adv))
    return tf.stop_gradient(x_adv)
