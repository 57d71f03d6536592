"""A generated training set on disk: a frozen generator's samples, made once and reused.

The set is class-balanced and in the `--data-dir` format (`x` uint8 NHWC, `y` uint8). It is
written in chunks beside the output file (`<out>.parts/`). Each chunk asks only for the classes
the chunks before it left short, with noise from (seed, chunk index): an interrupted run resumes
where it stopped and makes exactly the samples an uninterrupted one would have. An optional
filter keeps only the samples that a classifier assigns to their asked class (its top class),
with confidence >= a threshold (Wang et al. 2023).
"""

import json
import os
import shutil
import time

import keras
import numpy as np

from robgan_tf.quality import generate


class SampleError(ValueError):
    """The sampling cannot go on as asked (bad size, a filter that keeps almost nothing)."""


def _chunk_path(parts, index):
    return os.path.join(parts, f"chunk_{index:05d}.npz")


def _save_atomic(path, **arrays):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def write(generator, n, out, seed=0, chunk=1000, keep=None, threshold=0.0, describe=None, max_chunks=None,
          verbose=1):
    """Writes n class-balanced samples of `generator` (a Keras G(z, y)) to `out` (.npz) and their
    metadata to `out` with .json; returns the metadata. `keep`, a Keras classifier, filters:
    a sample stays if argmax keep(x) = y and softmax(keep(x))[y] >= threshold. `describe` goes into the metadata (what
    the generator and filter are)."""
    num_classes = _num_classes(generator)
    if n < num_classes or n % num_classes:
        raise SampleError(f"--n {n}: a class-balanced set needs a multiple of the {num_classes} classes")
    per_class = n // num_classes
    max_chunks = max_chunks or 100 * -(-n // chunk)
    parts = out + ".parts"
    os.makedirs(parts, exist_ok=True)
    counts, index, drawn = np.zeros(num_classes, int), 0, 0
    while os.path.exists(_chunk_path(parts, index)):  # resume: count what the chunks on disk hold
        with np.load(_chunk_path(parts, index)) as f:
            counts += np.bincount(f["y"], minlength=num_classes)
            drawn += int(f["drawn"])
        index += 1
    bar = keras.utils.Progbar(n, verbose=verbose, unit_name="sample")
    bar.update(int(counts.sum()))
    started = time.time()
    passed, tried = np.zeros(num_classes), np.zeros(num_classes)  # this session's filter counts, per class
    while counts.min() < per_class:
        # a filter that cannot fill a class within max_chunks is refused as soon as a few chunks show it
        short = np.flatnonzero(counts < per_class)
        rates = (passed[short] + 1) / (tried[short] + 2)  # smoothed: no pass yet is not a rate of 0
        chunks_left = np.sum((per_class - counts[short]) / rates) / chunk
        if index >= max_chunks or (tried.sum() >= 3 * chunk and index + chunks_left > max_chunks):
            raise SampleError(f"after {drawn} candidates the filter kept only {counts.min()} of the {per_class} "
                              f"samples asked in some class{_lowest_rate(passed[short], tried[short])}: "
                              f"lower the confidence threshold")
        # a chunk asks only for the classes still short (a function of the chunks on disk: resumes draw the same)
        labels = short[np.arange(chunk) % len(short)]
        images = generate(generator, labels, seed=_chunk_seed(seed, index))
        accepted = np.ones(chunk, bool)
        if keep is not None:
            probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(keep.predict(images, verbose=0)))
            accepted = (probabilities.argmax(1) == labels) & (probabilities[np.arange(chunk), labels] >= threshold)
        taken = []
        for c in range(num_classes):  # in chunk order, up to what the class still needs
            taken += list(np.flatnonzero(accepted & (labels == c))[:per_class - counts[c]])
        taken = np.sort(np.array(taken, int))
        x = np.round(images[taken] * 255).clip(0, 255).astype(np.uint8)
        y = labels[taken].astype(np.uint8)
        _save_atomic(_chunk_path(parts, index), x=x, y=y, drawn=chunk)
        counts += np.bincount(y, minlength=num_classes)
        passed += np.bincount(labels[accepted], minlength=num_classes)
        tried += np.bincount(labels, minlength=num_classes)
        drawn += chunk
        index += 1
        bar.update(int(counts.sum()))
    x, y = _join(parts, index)
    _save_atomic(out if out.endswith(".npz") else out + ".npz", x=x, y=y)
    metadata = {**(describe or {}), "n": n, "per_class": per_class, "seed": seed, "chunk": chunk,
                "threshold": threshold if keep is not None else None, "candidates_drawn": drawn,
                "chunks_ask_for": "the classes still short",  # since a85a712; before, every class alike
                "kept_fraction": round(n / drawn, 4), "image_shape": list(x.shape[1:]),
                "seconds_this_session": round(time.time() - started, 1)}
    with open(metadata_path(out) + ".tmp", "w") as f:
        json.dump(metadata, f, indent=2)
    os.replace(metadata_path(out) + ".tmp", metadata_path(out))
    shutil.rmtree(parts)
    return metadata


def _lowest_rate(passed, tried):
    """' (it passes as few as r% of a class's candidates)' over the classes drawn this session, or ''."""
    seen = tried > 0
    if not seen.any():
        return ""
    return f" (it passes as few as {np.min(passed[seen] / tried[seen]):.1%} of a class's candidates)"


def metadata_path(out):
    return (out[:-len(".npz")] if out.endswith(".npz") else out) + ".json"


def _chunk_seed(seed, index):
    return int(np.random.default_rng([seed, index]).integers(2 ** 31))


def _num_classes(generator):
    """The classes a generator is conditioned on: the rows of its class-conditional BN tables."""
    for layer in generator.layers:
        if hasattr(layer, "num_classes"):
            return int(layer.num_classes)
    raise SampleError(f"{generator.name} is not a class-conditional generator of this project")


def _join(parts, chunks):
    xs, ys = [], []
    for index in range(chunks):
        with np.load(_chunk_path(parts, index)) as f:
            xs.append(f["x"])
            ys.append(f["y"])
    return np.concatenate(xs), np.concatenate(ys)
