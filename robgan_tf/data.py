"""Image-classification data: local `.npz` files or TensorFlow Datasets, as tf.data pipelines.

Arrays leave this module as uint8 NHWC images and integer labels; pipelines yield
float32 images in [0, 1] and int32 labels.
"""

import hashlib
import os
import socket
import zipfile

import numpy as np
import tensorflow as tf

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}


class DataError(ValueError):
    """Raised with a one-line message saying what is wrong with the data and how to fix it."""


class Dataset:
    """A named train/test pair of uint8 image arrays with integer labels."""

    def __init__(self, name, x_train, y_train, x_test, y_test, class_names=None):
        self.name = name
        self.x_train, self.y_train = _check_arrays(name, "train", x_train, y_train)
        self.x_test, self.y_test = _check_arrays(name, "test", x_test, y_test)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{name}: train images are {self.x_train.shape[1:]} but test images are "
                            f"{self.x_test.shape[1:]}; both splits must have the same image shape")
        self.num_classes = int(max(self.y_train.max(), self.y_test.max())) + 1
        self.class_names = list(class_names or CLASS_NAMES.get(name) or
                                [str(i) for i in range(self.num_classes)])
        if len(self.class_names) < self.num_classes:
            raise DataError(f"{name}: labels go up to {self.num_classes - 1} but only "
                            f"{len(self.class_names)} class names are known")

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])

    def identity(self):
        """What a run records of its data, so that a resume on other data is refused: the split
        sizes and a digest of the labels and of every image's first row."""
        digest = hashlib.sha1(self.y_train.tobytes())
        digest.update(np.ascontiguousarray(self.x_train[:, 0]).tobytes())
        return {"name": self.name, "train": len(self.y_train), "test": len(self.y_test),
                "digest": digest.hexdigest()[:16]}


def _check_arrays(name, split, x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{name}/{split}: images must be (N, H, W, C) with C in (1, 3), got shape {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{name}/{split}: images must be uint8 pixels 0..255, got dtype {x.dtype}")
    if min(x.shape[1:3]) < 8:
        raise DataError(f"{name}/{split}: images of {x.shape[1]}x{x.shape[2]} are too small (need >= 8x8)")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}/{split}: labels must be N integers matching {x.shape[0]} images, "
                        f"got dtype {y.dtype} shape {y.shape}")
    if y.size == 0 or y.min() < 0:
        raise DataError(f"{name}/{split}: labels must be non-negative and the split must not be empty")
    return x, y.astype(np.int32)


def load(name, data_dir=None, tfds_dir=None):
    """Loads `name` from `<data_dir>/<name>_{train,test}.npz` or, without data_dir, from tfds."""
    if data_dir is not None:
        return _load_npz(name, data_dir)
    return _load_tfds(name, tfds_dir)


def _load_npz(name, data_dir):
    if not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir}: no such folder")
    arrays = []
    for split in ("train", "test"):
        path = os.path.join(data_dir, f"{name}_{split}.npz")
        if not os.path.exists(path):
            found = sorted(f for f in os.listdir(data_dir) if f.endswith("_train.npz"))
            known = ", ".join(f[:-len("_train.npz")] for f in found) or "none"
            raise DataError(f"missing data file {path} (datasets in {data_dir}: {known}); "
                            f"pass --data-dir pointing at <dataset>_train.npz/<dataset>_test.npz "
                            f"or leave it out to use tensorflow_datasets")
        arrays += read_npz(path)
    return Dataset(name, *arrays)


def read_npz(path):
    """The arrays x and y of an .npz file, or a DataError saying in one line what is wrong with it."""
    problem = f"{path} is not a readable .npz with arrays 'x' and 'y'"
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise DataError(f"{problem}: it is not a zip archive (truncated, or not written by numpy.savez)")
    try:
        with np.load(path) as f:
            return [f["x"], f["y"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{problem}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _load_tfds(name, tfds_dir):
    import tensorflow_datasets as tfds

    if name not in tfds.list_builders():
        raise DataError(f"unknown dataset {name!r}: not a tensorflow_datasets name; "
                        f"use e.g. mnist or cifar10, or --data-dir with {name}_train.npz/{name}_test.npz")
    builder = tfds.builder(name, data_dir=tfds_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"tfds dataset {name!r} has no 'image' and 'label' features; "
                        f"it is not an image-classification set")
    missing = {"train", "test"} - set(builder.info.splits)
    if builder.info.splits and missing:  # splits are known once the set is prepared
        raise DataError(f"tfds dataset {name!r} has no {' or '.join(sorted(missing))} split "
                        f"(it has {', '.join(builder.info.splits)}); use --data-dir with npz files instead")
    try:
        splits = [_read_split(builder, s) for s in ("train", "test")]
    except AssertionError:  # tfds' way of saying the data is not prepared in data_dir
        if not _online():
            raise DataError(f"{name} is not prepared in {builder.data_dir} and this machine cannot "
                            f"download it; pass --tfds-dir with a prepared copy or --data-dir with .npz files"
                            ) from None
        builder.download_and_prepare()
        splits = [_read_split(builder, s) for s in ("train", "test")]
    names = getattr(features["label"], "names", None)
    return Dataset(name, *splits[0], *splits[1], class_names=names)


def _read_split(builder, split):
    import tensorflow_datasets as tfds

    try:
        batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000)))
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise DataError(f"{builder.name}/{split} cannot be read as one array of images (images of "
                        f"different sizes?): {str(e).splitlines()[0]}") from None
    return (np.concatenate([b["image"] for b in batches]), np.concatenate([b["label"] for b in batches]))


def _online(host="storage.googleapis.com", timeout=3.0):
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def subset(x, y, n, seed=0):
    """A shuffled, class-stratified subset of n examples (all of them when n is None or >= len)."""
    if n is None or n >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    take = [idx[:n // len(classes) + (i < n % len(classes))] for i, idx in enumerate(per_class)]
    idx = rng.permutation(np.concatenate(take))
    return x[idx], y[idx]


def to_float(x):
    """uint8 pixels -> float32 in [0, 1]; float images pass through as float32."""
    if x.dtype == tf.uint8:
        return tf.cast(x, tf.float32) / 255.0
    return tf.cast(x, tf.float32)


class TrainData:
    """Training batches whose order and augmentation depend only on (seed, epoch, batch index):
    a run resumed mid-epoch sees exactly the batches an uninterrupted run would have seen."""

    def __init__(self, x, y, batch_size, augment=False, seed=0):
        self.x, self.y = tf.constant(x), tf.constant(y.astype(np.int32))
        self.size, self.batch_size, self.augment, self.seed = len(y), batch_size, augment, seed
        self.steps = len(y) // batch_size

    def epochs(self, first, last, skip=0):
        """Batches of epochs first..last-1 (float32 images in [0, 1], int32 labels), shuffled
        afresh each epoch; the first `skip` batches of the first epoch are left out."""
        used = self.steps * self.batch_size
        order = np.concatenate([np.random.default_rng([self.seed, epoch]).permutation(self.size)[:used]
                                .reshape(self.steps, self.batch_size) for epoch in range(first, last)])
        seeds = np.array([[self.seed * 1_000_003 + epoch, i] for epoch in range(first, last)
                          for i in range(self.steps)], np.int64)
        batches = tf.data.Dataset.from_tensor_slices((order[skip:].astype(np.int32), seeds[skip:]))
        return batches.map(self._prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def _prepare(self, indices, seed):
        images = to_float(tf.gather(self.x, indices))
        return (_augment(images, seed) if self.augment else images), tf.gather(self.y, indices)


class MixedTrainData:
    """Training batches of which a fraction comes from a set of generated images (Gowal et al.
    2021: 70%): per step, `real_batch` real images (an epoch is one pass over them, as in
    TrainData) and `batch_size - real_batch` generated ones, drawn afresh each epoch from (seed,
    epoch). Yields (images, labels, smoothing): the label smoothing of each image, `smoothing`
    for the generated ones and 0 for the real ones. Only the real images are augmented."""

    def __init__(self, x, y, synthetic, batch_size, fraction, smoothing=0.0, augment=False, seed=0):
        self.fake_batch = int(round(fraction * batch_size))
        if not 0 < self.fake_batch < batch_size:
            raise DataError(f"--synthetic-fraction {fraction} leaves no real or no generated image in a batch "
                            f"of {batch_size}")
        self.real_batch, self.smoothing, self.seed = batch_size - self.fake_batch, float(smoothing), seed
        self.real = TrainData(x, y, self.real_batch, augment, seed)
        self.x_fake, self.y_fake = tf.constant(synthetic[0]), tf.constant(synthetic[1].astype(np.int32))
        self.steps = self.real.steps

    def epochs(self, first, last, skip=0):
        n = len(self.y_fake)
        picks = np.concatenate([np.random.default_rng([self.seed, 7, epoch]).integers(0, n, (
            self.steps, self.fake_batch)) for epoch in range(first, last)])[skip:].astype(np.int32)
        fake = tf.data.Dataset.from_tensor_slices(picks).map(
            lambda i: (to_float(tf.gather(self.x_fake, i)), tf.gather(self.y_fake, i)))
        real = self.real.epochs(first, last, skip)
        return tf.data.Dataset.zip(real, fake).map(self._join).prefetch(tf.data.AUTOTUNE)

    def _join(self, real, fake):
        smoothing = tf.concat([tf.zeros([self.real_batch]), tf.fill([self.fake_batch], self.smoothing)], 0)
        return tf.concat([real[0], fake[0]], 0), tf.concat([real[1], fake[1]], 0), smoothing


def load_synthetic(path, dataset):
    """A generated data set (sample.py's .npz: x uint8 NHWC, y labels) checked against `dataset`."""
    if not os.path.isfile(path):
        raise DataError(f"--synthetic {path}: no such file (make one with sample.py)")
    x, y = _check_arrays(os.path.basename(path), "synthetic", *read_npz(path))
    if x.shape[1:] != dataset.image_shape or y.max() >= dataset.num_classes:
        raise DataError(f"--synthetic {path} holds {x.shape[1:]} images of {int(y.max()) + 1} classes, not "
                        f"{dataset.name}'s {dataset.image_shape} images of {dataset.num_classes} classes")
    return x, y


def split_validation(x, y, n, seed=0):
    """(x_val, y_val), (x_rest, y_rest): a stratified validation split of n images and the rest."""
    if not n:
        return (x[:0], y[:0]), (x, y)
    rng = np.random.default_rng([seed, 11])
    classes = np.unique(y)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    taken = np.concatenate([idx[:n // len(classes) + (i < n % len(classes))] for i, idx in enumerate(per_class)])
    rest = np.setdiff1d(np.arange(len(y)), taken)
    return (x[taken], y[taken]), (x[rest], y[rest])


def run_split(dataset, val_examples, train_limit, seed=0):
    """(x_val, y_val), (x, y): a run's validation split held out of the training split, and its
    training images (at most train_limit of the rest, stratified). Trainer and study both use this."""
    validation, (x, y) = split_validation(dataset.x_train, dataset.y_train, val_examples, seed)
    return validation, subset(x, y, train_limit, seed)


def _augment(images, seed):
    """Per image: random crop after 4-pixel reflection padding, random horizontal flip (stateless)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    padded = tf.pad(images, [[0, 0], [4, 4], [4, 4], [0, 0]], mode="REFLECT")
    offsets = tf.random.stateless_uniform((shape[0], 2), crop_seed, 0, 9, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(shape[1])[None]  # one gather per axis crops every image at once
    cols = offsets[:, 1:] + tf.range(shape[2])[None]
    crops = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform((shape[0], 1, 1, 1), flip_seed) < 0.5
    return tf.where(flip, tf.reverse(crops, axis=[2]), crops)


def eval_pipeline(x, y, batch_size):
    """Batched float images in order, for evaluation."""
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).batch(batch_size)
    return ds.map(lambda a, b: (to_float(a), b)).prefetch(tf.data.AUTOTUNE)
