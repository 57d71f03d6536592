"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentations of the images D's
real/fake head sees, real and generated alike, in D's and G's updates, so that D cannot memorise
a small training set and G still receives gradients through the augmentation.

Every transform is per image, drawn from a stateless seed (the same seed gives the same
transforms, so a real and a fake batch can share them), and built from differentiable ops only
(no resize, whose gradient has no XLA kernel on the CPU).
"""

import tensorflow as tf

POLICIES = ("color", "translation", "cutout")


def color(x, seed):
    """Brightness + U(-0.5, 0.5), saturation x U(0, 2) and contrast x U(0.5, 1.5) about the
    image's own means, on [0, 1] images (not clipped, as in the paper)."""
    s = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    n = tf.shape(x)[0]
    x = x + (tf.random.stateless_uniform((n, 1, 1, 1), s[0]) - 0.5)
    if x.shape[-1] == 3:  # grey images have no saturation
        grey = tf.reduce_mean(x, axis=3, keepdims=True)
        x = grey + (x - grey) * tf.random.stateless_uniform((n, 1, 1, 1), s[1], 0.0, 2.0)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return mean + (x - mean) * tf.random.stateless_uniform((n, 1, 1, 1), s[2], 0.5, 1.5)


def translation(x, seed, ratio=0.125):
    """Shifts each image by up to `ratio` of its side in each direction, filling with zeros."""
    n, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    pad_h, pad_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shifts = tf.random.stateless_uniform((n, 2), seed, -1, 1) * [pad_h, pad_w]
    shifts = tf.cast(tf.round(shifts), tf.int32)
    padded = tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    rows = pad_h - shifts[:, :1] + tf.range(h)[None]  # one gather per axis moves every image at once
    cols = pad_w - shifts[:, 1:] + tf.range(w)[None]
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def cutout(x, seed, ratio=0.5):
    """Zeroes a square of `ratio` of the side at a random place in each image."""
    n, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    centre = tf.cast(tf.random.stateless_uniform((n, 2), seed) * [h, w], tf.int32)
    rows = tf.range(h)[None, :] - (centre[:, :1] - size_h // 2)
    cols = tf.range(w)[None, :] - (centre[:, 1:] - size_w // 2)
    inside = ((rows >= 0) & (rows < size_h))[:, :, None] & ((cols >= 0) & (cols < size_w))[:, None, :]
    return x * tf.cast(~inside, x.dtype)[..., None]


def augment(x, seed, policies):
    """The `policies` (names from POLICIES, in that order) applied to x with seeds from `seed`;
    no policy: x itself."""
    if not policies:
        return x
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(POLICIES)))
    transforms = {"color": color, "translation": translation, "cutout": cutout}
    for name, s in zip(POLICIES, seeds):
        if name in policies:
            x = transforms[name](x, s)
    return x


def parse(text):
    """"color,translation,cutout" -> the tuple of policies ("" or "none": no augmentation)."""
    names = tuple(p.strip() for p in text.split(",") if p.strip() and p.strip() != "none")
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {unknown}: use {', '.join(POLICIES)}")
    return names
