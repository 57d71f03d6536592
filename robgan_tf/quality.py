"""Generator quality: is G's output recognisable and diverse, or has it collapsed?

Four numbers: GAN-test accuracy (a plain classifier trained on the real training set labels G's
class-conditional samples: are they recognisable?), GAN-train accuracy (Shmelkov et al. 2018: the
same plain classifier trained on G's samples alone, tested on real test images: do they cover
what the real images teach?), the per-class sample diversity relative to real test images and the
Frechet distance between samples and real test images. The last two are measured on the reference
classifier's features (its penultimate layer), not on pixels: pixel distances reward noise and
texture, so one template per class plus faint noise looked diverse. They are not Inception
features (whose weights cannot be downloaded here), so the Frechet distance is an FID-like number
comparable between runs that share a reference classifier, not with published FIDs. A collapsed
generator scores near chance on the first two and near 0 on the diversity; a generator of one
template per class passes GAN-test but fails GAN-train and the diversity.
"""

import keras
import numpy as np

from robgan_tf import data
from robgan_tf.evaluation import accuracy

# in metrics.csv; since the Frechet distance, the diversities are measured on the reference classifier's
# features (older runs' rows hold pixel-L2 diversities and no frechet_distance)
COLUMNS = ("gan_test_accuracy", "gan_train_accuracy", "sample_diversity", "min_class_diversity", "frechet_distance")
COLLAPSE_GAN_TEST = 0.5
COLLAPSE_DIVERSITY = 0.3


REFERENCE_LEARNING_RATE = 1e-3  # Adam's, for the reference CNN and GAN-train's


def build_reference_classifier(image_shape, num_classes):
    """The small plain CNN behind GAN-test accuracy."""
    inputs = keras.Input(image_shape)
    h = inputs
    for filters in (32, 64):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(h))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h), name="gan_test_classifier")


def train_reference_classifier(dataset, epochs=2, limit=20_000, seed=0, verbose="auto"):
    """Trains the GAN-test classifier briefly on real training images (its accuracy on real test
    images is `GeneratorQuality.reference_accuracy`)."""
    x, y = data.subset(dataset.x_train, dataset.y_train, limit, seed)
    return fit_reference_classifier(x, y, dataset.num_classes, epochs * (len(y) // 128), seed, verbose)


def fit_reference_classifier(x, y, num_classes, steps, seed=0, verbose="auto"):
    """The reference CNN trained for `steps` batches of 128 on images x (uint8 or [0, 1] floats)."""
    return _train(_compiled_reference_classifier(x.shape[1:], num_classes, seed), x, y, steps, seed, verbose)


def _compiled_reference_classifier(image_shape, num_classes, seed):
    keras.utils.set_random_seed(seed)
    model = build_reference_classifier(image_shape, num_classes)
    model.compile(keras.optimizers.Adam(REFERENCE_LEARNING_RATE),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _train(model, x, y, steps, seed, verbose):
    batches = data.TrainData(x, y, min(128, len(y)), seed=seed)
    epochs = -(-steps // batches.steps)
    model.fit(batches.epochs(0, epochs), epochs=epochs, steps_per_epoch=batches.steps, verbose=verbose,
              shuffle=False)  # TrainData shuffles; Keras warns on shuffle=True (its default) for a Dataset
    return model


def generate(generator, labels, seed=0, batch_size=500):
    """Class-conditional samples as float32 numpy images in [0, 1], G in inference mode."""
    labels = np.asarray(labels, np.int32)
    z_dim = generator.input[0].shape[-1]
    z = np.random.default_rng(seed).standard_normal((len(labels), z_dim)).astype(np.float32)
    return np.concatenate([np.asarray(generator([z[i:i + batch_size], labels[i:i + batch_size]],
                                                training=False))
                           for i in range(0, len(labels), batch_size)])


def mean_pairwise_distance(points):
    """Mean L2 distance between distinct pairs of points (images or feature vectors, flattened)."""
    flat = np.asarray(points, np.float64).reshape(len(points), -1)
    sq = np.sum(flat ** 2, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
    n = len(flat)
    return float(np.sqrt(d2)[~np.eye(n, dtype=bool)].mean())


def per_class_diversity(points, labels, classes=None):
    """Mean pairwise distance of the points of each class (of `classes`, default: those present)."""
    labels = np.asarray(labels)
    classes = np.unique(labels) if classes is None else classes
    return np.array([mean_pairwise_distance(points[labels == c]) for c in classes])


def feature_extractor(reference):
    """The reference classifier up to its penultimate layer: a model from its input to the input
    of its last layer (the Dense logits layer), sharing its weights."""
    last = reference.layers[-1]
    if (not isinstance(last, keras.layers.Dense) or len(reference.inputs) != 1 or len(reference.outputs) != 1
            or reference.outputs[0] is not last.output):
        raise ValueError(f"{reference.name}: its features are the input of its logits layer; expected a functional "
                         f"model of one input ending in one Dense layer, not in {type(last).__name__}")
    return keras.Model(reference.input, last.input, name=f"{reference.name}_features")


def features(extractor, images, batch_size=500):
    """The extractor's features of uint8 or [0, 1] float images, flattened, as float64 numpy."""
    out = [np.asarray(extractor(data.to_float(images[i:i + batch_size]), training=False))
           for i in range(0, len(images), batch_size)]
    out = np.concatenate(out).astype(np.float64)
    return out.reshape(len(out), -1)


def _sqrt_psd(matrix):
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0,
    rounding errors, are taken as 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a, features_b):
    """The Frechet distance between Gaussians fitted to two sets of feature vectors (rows):

        d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

    with mu the means and S the covariances (unbiased, np.cov's). It is FID's formula (Heusel et
    al. 2017) on whatever features are given. Tr((S_a S_b)^(1/2)) is computed, in float64, as the
    sum of the square roots of the eigenvalues of the symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2),
    which has the same eigenvalues as S_a S_b; the result is clipped at 0 (rounding errors)."""
    a, b = (np.asarray(f, np.float64) for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two sets of at least 2 feature vectors of one size, "
                         f"got shapes {a.shape} and {b.shape}")
    mean_term = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    cov_a, cov_b = (np.atleast_2d(np.cov(f, rowvar=False)) for f in (a, b))
    root_a = _sqrt_psd(cov_a)
    product = root_a @ cov_b @ root_a
    trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0.0, None)).sum())
    return max(mean_term + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * trace_root, 0.0)


class GeneratorQuality:
    """Scores a generator against real data: GAN-test accuracy, GAN-train accuracy, and on the
    reference classifier's features relative sample diversity and the Frechet distance.

    Real test images (stratified, `per_class` per class at most) are the yardstick: the reference
    classifier's accuracy on them, GAN-train's test set, and their features (computed once) for
    the diversity and the Frechet distance. G draws as many samples per class as they hold, once
    per score, for GAN-test, the diversity and the Frechet distance. GAN-train's CNN learns from as
    many samples as the run has real training images (`train_images`, at most `gan_train_limit`)
    for 10 epochs of 128 (20 to 200 batches); the same CNN learnt from the real images alone gives
    `gan_train_real_accuracy`, the bar to compare with."""

    def __init__(self, dataset, reference_classifier, per_class=200, seed=0, train_images=None,
                 gan_train_limit=2000):
        self.reference = reference_classifier
        self.extractor = feature_extractor(reference_classifier)
        self.seed, self.num_classes, self._cnn = seed, dataset.num_classes, None
        self.test = data.subset(dataset.x_test, dataset.y_test, per_class * dataset.num_classes, seed)
        self.labels = np.sort(self.test[1]).astype(np.int32)  # G draws the test images' classes, in their numbers
        self.classes = np.unique(self.labels)
        self.reference_accuracy = accuracy(reference_classifier, *self.test)
        self.real_features = features(self.extractor, self.test[0])
        self.real_diversity = per_class_diversity(self.real_features, self.test[1], self.classes)
        x_real, y_real = data.subset(*(train_images or (dataset.x_train, dataset.y_train)), gan_train_limit, seed)
        self.train_labels = np.sort(y_real)  # G is asked for the real images' classes, in their numbers
        self.gan_train_steps = int(np.clip(10 * len(y_real) // 128, 20, 200))
        self.real_train_accuracy = accuracy(self._fit(x_real, y_real), *self.test)

    def _fit(self, x, y):
        """The GAN-train CNN trained anew on x, y: one compiled model, set back to its first weights
        and a fresh optimizer state each time (so its step is traced once, not at every score)."""
        if self._cnn is None:
            self._cnn = _compiled_reference_classifier(x.shape[1:], self.num_classes, self.seed)
            self._first_weights = self._cnn.get_weights()
        self._cnn.set_weights(self._first_weights)
        optimizer = self._cnn.optimizer
        for variable in optimizer.variables:  # the step count and the moments; the learning rate is one
            variable.assign(keras.ops.zeros_like(variable))  # of them too, and is set back below
        optimizer.learning_rate = REFERENCE_LEARNING_RATE
        return _train(self._cnn, x, y, self.gan_train_steps, self.seed, verbose=0)

    def __call__(self, generator):
        samples = generate(generator, self.labels, self.seed)
        gan_test = accuracy(self.reference, samples, self.labels)
        gan_train = accuracy(self._fit(generate(generator, self.train_labels, self.seed + 1), self.train_labels),
                             *self.test)
        sample_features = features(self.extractor, samples)
        ratio = (per_class_diversity(sample_features, self.labels, self.classes) /
                 np.maximum(self.real_diversity, 1e-12))
        return {"gan_test_accuracy": gan_test, "gan_train_accuracy": gan_train, "sample_diversity": float(ratio.mean()),
                "min_class_diversity": float(ratio.min()), "least_diverse_class": int(self.classes[ratio.argmin()]),
                "frechet_distance": frechet_distance(sample_features, self.real_features),
                "gan_test_reference_accuracy": self.reference_accuracy,
                "gan_train_real_accuracy": self.real_train_accuracy}


def _gan_test_low(quality):
    """GAN-test accuracy below half what the reference classifier scores on real test images (it
    cannot recognise samples better than real ones): the problem's words, or None."""
    limit = COLLAPSE_GAN_TEST * quality.get("gan_test_reference_accuracy", 1.0)
    if quality["gan_test_accuracy"] >= limit:
        return None
    return (f"GAN-test accuracy {quality['gan_test_accuracy']:.2f} (< {limit:.2f}, half the reference "
            f"classifier's accuracy on real images)")


def describe(quality):
    """G's scores in one line: GAN-test, GAN-train, diversity and the Frechet distance."""
    return (f"GAN-test accuracy {quality['gan_test_accuracy']:.3f}, GAN-train accuracy "
            f"{quality['gan_train_accuracy']:.3f}, sample diversity {quality['sample_diversity']:.2f} of real, "
            f"Frechet distance {quality['frechet_distance']:.2f} (reference CNN features)")


def collapse_warning(quality):
    """A loud message when G has collapsed: a diversity (on the reference classifier's features)
    below COLLAPSE_DIVERSITY of real, over all classes or in any one of them; or None."""
    if quality["sample_diversity"] < COLLAPSE_DIVERSITY:
        problem = f"sample diversity {quality['sample_diversity']:.2f} of real (< {COLLAPSE_DIVERSITY})"
    elif quality.get("min_class_diversity", 1.0) < COLLAPSE_DIVERSITY:  # one class drawing one image
        problem = (f"class {quality.get('least_diverse_class', '?')} sample diversity "
                   f"{quality['min_class_diversity']:.2f} of real (< {COLLAPSE_DIVERSITY})")
    else:
        return None
    return ("WARNING: GENERATOR COLLAPSE SUSPECTED: " + "; ".join(filter(None, [problem, _gan_test_low(quality)]))
            + ". Samples of a class are near copies; see samples/.")


def conditioning_note(quality):
    """A plain note when G's samples are diverse (no collapse) but mostly not of their asked class,
    which is usual early in co-training and a problem only if it lasts; or None."""
    low = _gan_test_low(quality)
    if low is None or collapse_warning(quality) is not None:
        return None
    return (f"note: the generator is not class-conditional yet: {low}, while its samples are diverse "
            f"({quality['sample_diversity']:.2f} of real): usual in early epochs; a problem if it lasts to the end.")
