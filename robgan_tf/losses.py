"""Training losses as small pure functions of logits and labels, per example (float32).

Every train step averages them over the global batch with `tf.nn.compute_average_loss`, so the
same code is right on one device and under a `tf.distribute` strategy. Notation: x real images,
x' their PGD-attacked copies, y their labels, G(z, y~) generated images of asked labels y~,
D_rf the real/fake logit and D_cls the class logits of the discriminator, f the classifier
(D's trunk and class head).
"""

import tensorflow as tf


def cross_entropy(labels, logits, smoothing=0.0):
    """CE(f(x), y) = -Σ_k t_k·log softmax(f(x))_k, with t = (1 - s)·onehot(y) + s/K for label
    smoothing s (per example or one for all; s = 0 gives -log softmax(f(x))_y)."""
    logits = tf.cast(logits, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    if isinstance(smoothing, (int, float)) and smoothing == 0:
        return ce
    return (1.0 - smoothing) * ce - smoothing * tf.reduce_mean(tf.nn.log_softmax(logits), -1)


def binary_cross_entropy(target, logits):
    """BCE(D_rf(x), t) = -t·log σ(D_rf(x)) - (1 - t)·log(1 - σ(D_rf(x))), for logits of shape (N, 1)."""
    logits = tf.cast(logits[:, 0], tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(tf.fill(tf.shape(logits), target), logits)


def kl_divergence(p_logits, q_logits):
    """KL(p || q) = Σ_k p_k (log p_k - log q_k) between the softmax distributions of two logits."""
    p_log = tf.nn.log_softmax(tf.cast(p_logits, tf.float32))
    return tf.reduce_sum(tf.exp(p_log) * (p_log - tf.nn.log_softmax(tf.cast(q_logits, tf.float32))), -1)


def real_fake_loss(real_rf, fake_rf, kind="bce"):
    """D's real/fake term, for real/fake logits of shape (N, 1):

        bce:   BCE(D_rf(x), 1) + BCE(D_rf(G(z, y~)), 0)                 (Goodfellow et al. 2014)
        hinge: max(0, 1 - D_rf(x)) + max(0, 1 + D_rf(G(z, y~)))          (Lim & Ye 2017; SN-GAN, BigGAN)"""
    if kind == "hinge":
        real, fake = tf.cast(real_rf[:, 0], tf.float32), tf.cast(fake_rf[:, 0], tf.float32)
        return tf.nn.relu(1.0 - real) + tf.nn.relu(1.0 + fake)
    return binary_cross_entropy(1.0, real_rf) + binary_cross_entropy(0.0, fake_rf)


def fooling_loss(fake_rf, kind="bce"):
    """G's real/fake term: non-saturating BCE(D_rf(G(z, y~)), 1), or hinge's -D_rf(G(z, y~))."""
    if kind == "hinge":
        return -tf.cast(fake_rf[:, 0], tf.float32)
    return binary_cross_entropy(1.0, fake_rf)


def robgan_discriminator_loss(labels, real_cls, real_rf, fake_labels, fake_cls, fake_rf, fake_class_weight=0.0,
                              kind="bce"):
    """Rob-GAN's discriminator loss (Liu & Hsieh, CVPR 2019, eq. 4 with AC-GAN's class term):

        L_D = RF(D_rf(x_rf), D_rf(G(z, y~))) + CE(D_cls(x'), y) + w·CE(D_cls(G(z, y~)), y~)

    where RF is `real_fake_loss` of `kind` (BCE in the paper), x_rf is x' (the paper) or x, and
    w = `fake_class_weight` (0 in Rob-GAN)."""
    return (real_fake_loss(real_rf, fake_rf, kind) + cross_entropy(labels, real_cls)
            + fake_class_weight * cross_entropy(fake_labels, fake_cls))


def robgan_generator_loss(fake_labels, fake_cls, fake_rf, class_weight=1.0, kind="bce"):
    """Rob-GAN's generator loss, the `fooling_loss` of `kind` plus AC-GAN's class term:

        L_G = F(D_rf(G(z, y~))) + c·CE(D_cls(G(z, y~)), y~)

    with c = `class_weight` (1 in Rob-GAN; below 1 it pulls G less towards one template per class)."""
    return fooling_loss(fake_rf, kind) + class_weight * cross_entropy(fake_labels, fake_cls)


def finetune_loss(labels, real_logits, fake_labels, fake_logits, lam, smoothing=0.0):
    """Rob-GAN's fine-tuning loss ("Rob-GAN w/ FT", Liu & Hsieh 2019, sec. 4.3), G frozen:

        L = CE(f(x'), y) + λ·CE(f(G(z, y~)'), y~)

    with G(z, y~)' the PGD-attacked generated image (label smoothing s on the first term)."""
    return cross_entropy(labels, real_logits, smoothing) + lam * cross_entropy(fake_labels, fake_logits)


def trades_loss(labels, clean_logits, adv_logits, beta, smoothing=0.0):
    """TRADES (Zhang et al., ICML 2019, eq. 5):

        L = CE(f(x), y) + β·KL(f(x) || f(x'))

    with x' maximising the KL term in the eps-ball (label smoothing s on the CE term)."""
    return cross_entropy(labels, clean_logits, smoothing) + beta * kl_divergence(clean_logits, adv_logits)
