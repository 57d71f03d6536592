"""L-infinity attacks on classifiers that map images in [0, 1] to logits.

Each attack takes `logits_fn` (the model in inference mode), a batch `x` (float32 in [0, 1]),
labels `y`, a radius `eps` and a stateless `seed` of shape [2]; it returns images within `eps`
of x (L-infinity) and in [0, 1], carrying no gradient. Losses and perturbations are float32
whatever the model computes in. Wrap the calls in `tf.function`: the loops are `tf.while_loop`s.
"""

import tensorflow as tf


def default_step_size(eps, steps):
    """PGD's usual step: 2.5 * eps / steps, enough to cross the ball and come back."""
    return 2.5 * eps / max(steps, 1)


def cross_entropy(logits, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)


def _true_and_best_other(logits, y):
    true = tf.gather(logits, y, batch_dims=1)
    others = tf.where(tf.one_hot(y, tf.shape(logits)[-1]) > 0, -float("inf"), logits)
    return true, tf.reduce_max(others, -1)


def margin(logits, y):
    """CW margin: best other logit minus the true one (> 0 iff misclassified)."""
    true, other = _true_and_best_other(logits, y)
    return other - true


def targeted_dlr(logits, y, target):
    """Targeted difference-of-logits-ratio loss of APGD-T (Croce & Hein 2020), to maximise."""
    top = tf.sort(logits, direction="DESCENDING")
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    return (tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)) / scale


def _ball(x, eps):
    return tf.maximum(x - eps, 0.0), tf.minimum(x + eps, 1.0)


def _loss_and_grad(logits_fn, loss_fn, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(logits_fn(x), tf.float32)
        losses = loss_fn(logits)
        total = tf.reduce_sum(losses)
    return logits, losses, tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def pgd(logits_fn, x, y, eps, steps, step_size, seed, loss="ce", loss_scale=1.0, x_init=None, clip_init=True):
    """Projected gradient ascent (Madry et al.) from `x_init`, by default a uniform random point
    of the eps-ball. The start is projected onto the ball and [0, 1] unless `clip_init` is False:
    then the first gradient is taken where `x_init` lies, as FGSM-RS's reference code does.

    `loss` is "ce" (cross-entropy), "margin" (CW) or a function of the logits returning
    per-example losses (e.g. TRADES' KL term). Under float16, pass a `loss_scale` (e.g. 1024)
    so input gradients do not underflow (steps use their sign).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    eps = tf.cast(eps, tf.float32)
    lower, upper = _ball(x, eps)
    if not callable(loss):
        per_example = {"ce": cross_entropy, "margin": margin}[loss]
        loss = lambda logits: per_example(logits, y)  # noqa: E731
    loss_fn = lambda logits: loss_scale * loss(logits)  # noqa: E731

    def step(i, x_adv):
        _, _, grad = _loss_and_grad(logits_fn, loss_fn, x_adv)
        return i + 1, tf.clip_by_value(x_adv + step_size * tf.sign(grad), lower, upper)

    if x_init is None:
        x_init = x + tf.random.stateless_uniform(tf.shape(x), seed, -eps, eps)
    x_adv = tf.clip_by_value(x_init, lower, upper) if clip_init else tf.convert_to_tensor(x_init, tf.float32)
    _, x_adv = tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), x_adv))
    if not clip_init:  # each step clips; this keeps the guarantee should an unclipped start take none
        x_adv = tf.clip_by_value(x_adv, lower, upper)
    return tf.stop_gradient(x_adv)


def apgd(logits_fn, x, y, eps, steps, seed, target=None, rho=0.75, momentum=0.75, drop_fooled=True):
    """Auto-PGD (Croce & Hein 2020): momentum, and a step size (from 2·eps) halved at checkpoints
    where the loss rose in fewer than `rho` of the steps since the last one, or stopped improving;
    each halving restarts from the best point so far.

    Cross-entropy loss (APGD-CE), or with `target` classes the targeted DLR loss (APGD-T).
    Returns, per example, the first misclassified iterate, else the start point. No example's
    iterates depend on the others in its batch, so with `drop_fooled` the fooled examples leave the
    batch (once they are an eighth of it): fewer forward+backward passes, the same result up to the
    rounding of kernels that differ by batch size. The shrinking batch rules out XLA.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    eps = tf.cast(eps, tf.float32)
    first_check, min_period, period_decrease = (max(int(f * steps), 1) for f in (0.22, 0.06, 0.03))
    per_example = lambda flags: tf.reshape(flags, [-1] + [1] * (x.shape.rank - 1))  # noqa: E731

    def loss_fn(s):
        if target is None:
            return lambda logits: cross_entropy(logits, s["y"])
        return lambda logits: targeted_dlr(logits, s["y"], s["target"])

    noise = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    noise /= tf.reduce_max(tf.abs(noise), axis=list(range(1, x.shape.rank)), keepdims=True) + 1e-12
    x_adv = tf.clip_by_value(x + eps * noise, 0.0, 1.0)
    s = dict(x=x, y=y, target=y if target is None else tf.cast(target, y.dtype),
             row=tf.range(tf.shape(x)[0]))
    logits, loss, grad = _loss_and_grad(logits_fn, loss_fn(s), x_adv)
    fooled = tf.argmax(logits, -1, output_type=y.dtype) != y
    s = dict(s, x_adv=x_adv, x_prev=x_adv, grad=grad, loss=loss, step=2.0 * eps * tf.ones_like(loss),
             x_best=x_adv, grad_best=grad, loss_best=loss, fooled=fooled, rises=tf.zeros_like(loss),
             loss_best_at_check=loss, reduced_at_check=tf.ones_like(fooled))
    examples = set(s)  # the keys holding one entry per example still in the batch
    s.update(i=tf.constant(0), since_check=tf.constant(0), period=tf.constant(first_check), out=x_adv)

    def drop_if_many_fooled(s):
        if not drop_fooled:
            return s
        many = 8 * tf.reduce_sum(tf.cast(s["fooled"], tf.int32)) >= tf.size(s["fooled"])
        keep = lambda: {k: tf.boolean_mask(v, ~s["fooled"]) if k in examples else v for k, v in s.items()}  # noqa: E731
        return tf.cond(many, keep, lambda: s)

    def iteration(s):
        lower, upper = _ball(s["x"], eps)
        a = tf.where(s["i"] > 0, momentum, 1.0)
        z = tf.clip_by_value(s["x_adv"] + per_example(s["step"]) * tf.sign(s["grad"]), lower, upper)
        x_new = tf.clip_by_value(s["x_adv"] + a * (z - s["x_adv"]) + (1 - a) * (s["x_adv"] - s["x_prev"]),
                                 lower, upper)
        logits, loss, grad = _loss_and_grad(logits_fn, loss_fn(s), x_new)
        first_fooled = (tf.argmax(logits, -1, output_type=y.dtype) != s["y"]) & ~s["fooled"]
        improved = loss > s["loss_best"]
        s = dict(s, i=s["i"] + 1, x_prev=s["x_adv"], x_adv=x_new, grad=grad, loss=loss,
                 out=tf.tensor_scatter_nd_update(s["out"], tf.boolean_mask(s["row"], first_fooled)[:, None],
                                                 tf.boolean_mask(x_new, first_fooled)),
                 fooled=s["fooled"] | first_fooled,
                 rises=s["rises"] + tf.cast(loss > s["loss"], tf.float32),
                 x_best=tf.where(per_example(improved), x_new, s["x_best"]),
                 grad_best=tf.where(per_example(improved), grad, s["grad_best"]),
                 loss_best=tf.maximum(loss, s["loss_best"]), since_check=s["since_check"] + 1)
        s = tf.cond(s["since_check"] == s["period"], lambda: checkpoint(s), lambda: s)
        return drop_if_many_fooled(s)

    def checkpoint(s):
        oscillating = s["rises"] <= rho * tf.cast(s["period"], tf.float32)
        stalled = ~s["reduced_at_check"] & (s["loss_best_at_check"] >= s["loss_best"])
        reduce = oscillating | stalled
        return dict(s, step=tf.where(reduce, s["step"] / 2, s["step"]),
                    x_adv=tf.where(per_example(reduce), s["x_best"], s["x_adv"]),
                    grad=tf.where(per_example(reduce), s["grad_best"], s["grad"]),
                    reduced_at_check=reduce, loss_best_at_check=s["loss_best"], since_check=tf.constant(0),
                    period=tf.maximum(s["period"] - period_decrease, min_period), rises=tf.zeros_like(s["rises"]))

    s = drop_if_many_fooled(s)
    shapes = {k: tf.TensorShape([None]).concatenate(v.shape[1:]) if k in examples else v.shape for k, v in s.items()}
    s = tf.while_loop(lambda s: (s["i"] < steps) & (tf.size(s["row"]) > 0), lambda s: (iteration(s),), (s,),
                      shape_invariants=(shapes,))[0]
    return tf.stop_gradient(s["out"])


def _square_size(i, p_init, height, width, n_queries):
    """Side of the square window at iteration i of n_queries: p_init halves at 10, 50, 200, 500,
    ... of 10,000 queries, the schedule scaled to the budget (as AutoAttack's Square does)."""
    scaled = i * 10000 // n_queries
    halvings = tf.reduce_sum(tf.cast(scaled > tf.constant([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]),
                                     tf.float32))
    p = p_init / 2.0 ** halvings
    side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
    return tf.clip_by_value(side, 1, min(height, width) - 1)


def square(logits_fn, x, y, eps, iterations, seed, p_init=0.8, x_start=None, first_iteration=0, n_queries=None):
    """Square attack, L-infinity (Andriushchenko et al. 2020): black-box, scores only.

    Starts from vertical stripes of ±eps (one query), then each iteration sets a random square
    window of each image to x ± eps (a random sign per channel) and keeps it when the margin
    loss drops. Examples already misclassified are left alone; the loop ends early once all are.
    To continue a run in pieces, pass its result as `x_start`, the next `first_iteration` and the
    whole run's `n_queries` (they set the window-size schedule; by default this call is the run).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    eps = tf.cast(eps, tf.float32)
    lower, upper = _ball(x, eps)
    batch, (height, width, channels) = tf.shape(x)[0], x.shape[1:]
    if x_start is None:
        stripes = tf.sign(tf.random.stateless_uniform([batch, 1, width, channels], seed, -1.0, 1.0))
        x_start = tf.clip_by_value(x + eps * stripes, 0.0, 1.0)
    score = lambda images: margin(tf.cast(logits_fn(images), tf.float32), y)  # noqa: E731

    def iteration(i, x_best, best):
        side = _square_size(i, p_init, height, width, n_queries)
        step_seed = tf.random.experimental.stateless_fold_in(seed, i)
        top = tf.random.stateless_uniform([batch], step_seed, 0, height - side + 1, tf.int32)
        left = tf.random.stateless_uniform([batch], step_seed + 1, 0, width - side + 1, tf.int32)
        rows = tf.range(height)[None, :] - top[:, None]
        cols = tf.range(width)[None, :] - left[:, None]
        window = ((rows >= 0) & (rows < side))[:, :, None, None] & ((cols >= 0) & (cols < side))[:, None, :, None]
        signs = tf.sign(tf.random.stateless_uniform([batch, 1, 1, channels], step_seed + 2, -1.0, 1.0))
        unchanged = tf.reduce_all(~window | (tf.abs(tf.clip_by_value(x + eps * signs, 0.0, 1.0) - x_best) < 1e-7),
                                  axis=[1, 2, 3], keepdims=True)
        signs = tf.where(unchanged, -signs, signs)
        candidate = tf.clip_by_value(tf.where(window, x + eps * signs, x_best), lower, upper)
        value = score(candidate)
        better = (best < 0) & (value > best)
        return (i + 1, tf.where(better[:, None, None, None], candidate, x_best), tf.where(better, value, best))

    first = tf.convert_to_tensor(first_iteration, tf.int32)
    last = first + tf.convert_to_tensor(iterations, tf.int32)
    n_queries = last if n_queries is None else tf.convert_to_tensor(n_queries, tf.int32)
    _, x_best, _ = tf.while_loop(lambda i, _, best: (i < last) & tf.reduce_any(best < 0), iteration,
                                 (first, x_start, score(x_start)))
    return tf.stop_gradient(x_best)
