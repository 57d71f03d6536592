"""Robustness of a classifier that maps images in [0, 1] to logits, measured honestly.

`Evaluator` runs the attacks of `attacks.py` in batches, compiled, on the examples still
classified correctly, and verifies every adversarial image it counts (inside the eps-ball and
[0, 1], misclassified by the model in inference mode). `evaluate` builds a full report: clean
accuracy, robust accuracy per attack and eps, the AutoAttack-style composition (APGD-CE, then
APGD-T, then Square, each on the points still robust) and the gradient-masking checks.
"""

import dataclasses
import functools
import math
import os
import time
import zlib

import keras
import numpy as np
import tensorflow as tf

from robgan_tf import attacks, data, masking, models, rundir
from robgan_tf.config import AttackSettings



@dataclasses.dataclass(frozen=True)
class PGD:
    """PGD with a random start, step 2.5·eps/steps, cross-entropy; the best of `restarts` runs."""

    steps: int = 20
    restarts: int = 1

    @property
    def name(self):
        return f"pgd-{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "")

    def pieces(self, evaluator, eps, num_classes):
        step = tf.constant(attacks.default_step_size(eps, self.steps), tf.float32)
        once = lambda x, y, _, seed: evaluator.pgd(x, y, tf.constant(eps, tf.float32), self.steps, step, seed)  # noqa: E731
        return [(once, False)] * self.restarts


@dataclasses.dataclass(frozen=True)
class APGD:
    """APGD-CE, or with `targets` > 0 APGD-T against the top `targets` other classes in turn."""

    steps: int = 100
    targets: int = 0

    @property
    def name(self):
        return "apgd-t" if self.targets else "apgd-ce"

    def pieces(self, evaluator, eps, num_classes):
        eps = tf.constant(eps, tf.float32)
        if not self.targets:
            return [(lambda x, y, _, seed: evaluator.apgd(x, y, eps, self.steps, seed), False)]
        if num_classes < 4:
            raise ValueError("APGD-T's targeted DLR loss needs at least 4 classes")

        def targeted(rank):
            def attempt(x, y, _, seed):
                target = np.argsort(-evaluator.logits(x), axis=-1)[:, rank].astype(np.int32)
                return evaluator.apgd(x, y, eps, self.steps, seed, target=tf.constant(target))
            return attempt
        return [(targeted(rank), False) for rank in range(1, min(self.targets, num_classes - 1) + 1)]


@dataclasses.dataclass(frozen=True)
class Square:
    """The Square attack with a budget of `queries` per example, run in chunks of `chunk`
    queries (each continuing from the last, on the whole budget's window schedule)."""

    queries: int = 5000
    p_init: float = 0.8
    chunk: int = 250
    name = "square"

    def pieces(self, evaluator, eps, num_classes):
        eps = tf.constant(eps, tf.float32)

        def piece(first):
            def attempt(x, y, current, seed):
                n = tf.constant(min(self.chunk, self.queries - 1 - first))
                return evaluator.square(x, y, eps, n, seed, self.p_init, first_iteration=tf.constant(first),
                                        x_start=None if first == 0 else tf.constant(current),
                                        n_queries=tf.constant(self.queries))
            return attempt
        return [(piece(first), True) for first in range(0, self.queries - 1, self.chunk)]  # query 1: the start


@dataclasses.dataclass(frozen=True)
class AutoAttack:
    """The AutoAttack-style composition: each part runs on the examples the earlier ones left robust."""

    parts: tuple
    name = "autoattack"


def attack_named(name, settings):
    """The attack a command line names (pgd, apgd-ce, apgd-t, square, autoattack) with `settings`' budgets."""
    s = settings
    apgd_ce, apgd_t = APGD(s.apgd_steps), APGD(s.apgd_steps, s.apgd_targets)
    square = Square(s.square_queries, s.square_p_init)
    return {"pgd": PGD(s.pgd_steps, s.pgd_restarts), "apgd-ce": apgd_ce, "apgd-t": apgd_t, "square": square,
            "autoattack": AutoAttack((apgd_ce, apgd_t, square))}[name]


ATTACK_CHOICES = ("pgd", "apgd-ce", "apgd-t", "square", "autoattack")
STRONG_PGD = PGD(100, 5)  # the masking check's stronger PGD


def accuracy(classifier, x, y, batch_size=500):
    """Clean accuracy of a Keras logits classifier on uint8 or [0, 1] float images."""
    correct = 0
    for xb, yb in data.eval_pipeline(x, y, batch_size):
        correct += int(tf.reduce_sum(tf.cast(_predict(classifier, xb) == yb, tf.int32)))
    return correct / len(y)


@tf.function
def _predict(classifier, x):
    return tf.argmax(classifier(x, training=False), -1, output_type=tf.int32)


def inference_fn(classifier):
    """The logits function attacks use: the Keras model in inference mode (BatchNorm frozen)."""
    return lambda images: classifier(images, training=False)


def wilson_interval(accuracy_value, n, z=1.96):
    """Wilson score 95% interval of a proportion measured on n examples."""
    if n == 0:
        return (0.0, 1.0)
    centre = (accuracy_value + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy_value * (1 - accuracy_value) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def eps_key(eps):
    return format(eps, ".6g")


class Evaluator:
    """Attacks one classifier in batches; each attack returns which examples survive it."""

    def __init__(self, logits_fn, settings=AttackSettings(), verbose=True):
        self.settings = settings
        self.verbose = verbose
        compiled = functools.partial(tf.function, reduce_retracing=True)
        logits = lambda images: tf.cast(logits_fn(images), tf.float32)  # noqa: E731
        self._logits = compiled(logits)
        self.pgd = compiled(functools.partial(attacks.pgd, logits))
        self.apgd = compiled(functools.partial(attacks.apgd, logits))
        self.square = compiled(functools.partial(attacks.square, logits))

    def logits(self, x):
        return np.concatenate([self._logits(tf.constant(x[i:i + self.settings.batch_size])).numpy()
                               for i in range(0, len(x), self.settings.batch_size)])

    def predict(self, x):
        return self.logits(x).argmax(-1).astype(np.int32)

    def run(self, attack, x, y, eps, todo):
        """Attacks (PGD, APGD or Square) the examples where `todo` holds. Returns (robust, x_adv):
        robust is `todo` minus the examples fooled, x_adv holds their adversarial images (clean
        images elsewhere). Each of the attack's pieces runs on the examples not yet fooled; a
        piece that carries hands its output to the next as its start."""
        s = self.settings
        robust, x_adv = todo.copy(), x.copy()
        index = np.flatnonzero(todo)
        batches = [index[i:i + s.batch_size] for i in range(0, len(index), s.batch_size)]
        pieces = attack.pieces(self, eps, self.logits(x[:1]).shape[-1])
        bar = keras.utils.Progbar(len(batches) * len(pieces), verbose=1) if self.verbose and batches else None
        for b, rows in enumerate(batches):
            xb, yb = x[rows], y[rows]
            best = xb.copy()
            for a, (attempt, carry) in enumerate(pieces):
                left = np.flatnonzero(self.predict(best) == yb)
                if len(left):
                    salt = zlib.crc32(f"{attack.name}/{eps_key(eps)}/{b}/{a}".encode())
                    new = np.asarray(attempt(xb[left], yb[left], best[left], tf.constant([s.seed, salt], tf.int64)))
                    keep = slice(None) if carry else self.predict(new) != yb[left]
                    best[left[keep]] = new[keep]
                if bar:
                    bar.add(1)
            _check_in_ball(best, xb, eps)
            fooled = self.predict(best) != yb
            robust[rows[fooled]] = False
            x_adv[rows[fooled]] = best[fooled]
        return robust, x_adv


def _check_in_ball(x_adv, x, eps):
    """An attack that leaves the eps-ball or [0, 1] is a bug, never a result."""
    inside = np.isfinite(x_adv) & (np.abs(x_adv - x) <= eps + 1e-5) & (x_adv >= 0.0) & (x_adv <= 1.0)
    if not inside.all():
        raise AssertionError(f"an attack left the eps={eps:g} ball or [0, 1]")


def evaluate(logits_fn, x, y, eps_values, attack=None, settings=AttackSettings(), check_masking=False,
             large_eps=None, verbose=True):
    """Clean and robust accuracy of a classifier on (x, y), and the gradient-masking checks.

    `attack` is a PGD, APGD, Square or AutoAttack (default: the AutoAttack of `settings`' budgets,
    which also reports its first part alone and `settings`' PGD). With `check_masking`, PGD and
    APGD-CE also run at eps/3, 2·eps/3 (of the largest eps) and at `large_eps`, and a stronger PGD
    (100 steps, 5 restarts) at each eps.
    Returns a dict: clean_accuracy, robust_accuracy {attack: {eps: acc}}, autoattack_stages,
    seconds, masking_checks, plus per-example robustness and adversarial images for pictures.
    """
    attack = attack or attack_named("autoattack", settings)
    pgd = attack_named("pgd", settings)
    x = data.to_float(x).numpy() if x.dtype == np.uint8 else np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    evaluator = Evaluator(logits_fn, settings, verbose)
    started = time.time()
    correct = evaluator.predict(x) == y
    result = {"n_examples": len(y), "clean_accuracy": float(correct.mean()), "robust_accuracy": {},
              "autoattack_stages": {}, "seconds": {}, "robust_examples": {}, "adversarial": {}}

    def record(name, eps, robust, seconds):
        result["robust_accuracy"].setdefault(name, {})[eps_key(eps)] = float(robust.mean())
        result["seconds"].setdefault(name, {})[eps_key(eps)] = round(seconds, 1)
        result["robust_examples"].setdefault(name, {})[eps_key(eps)] = robust

    def run(one, eps, todo):
        if verbose:
            print(f"{one.name} eps={eps:.4g}: {int(todo.sum())} examples")
        t = time.time()
        robust, x_adv = evaluator.run(one, x, y, eps, todo)
        return robust, x_adv, time.time() - t

    def run_and_record(one, eps):
        robust, x_adv, seconds = run(one, eps, correct)
        record(one.name, eps, robust, seconds)
        return x_adv

    for eps in sorted(eps_values):
        if isinstance(attack, AutoAttack):
            run_and_record(pgd, eps)
            robust, x_adv, stages, total = correct, x.copy(), {}, 0.0
            for i, part in enumerate(attack.parts):
                survivors, part_adv, seconds = run(part, eps, robust)
                x_adv[robust & ~survivors] = part_adv[robust & ~survivors]
                robust, total = survivors, total + seconds
                stages[part.name] = float(robust.mean())
                if i == 0:  # first in the chain, so it ran on every correct example
                    record(part.name, eps, robust, seconds)
            record(attack.name, eps, robust, total)
            result["autoattack_stages"][eps_key(eps)] = stages
        else:
            x_adv = run_and_record(attack, eps)
        result["adversarial"][eps_key(eps)] = x_adv
        if check_masking:
            run_and_record(STRONG_PGD, eps)

    if check_masking:
        top = max(eps_values)
        done = {eps_key(e) for e in eps_values}
        extra = sorted({top / 3, 2 * top / 3} | ({large_eps} if large_eps else set()))
        for eps in (e for e in extra if eps_key(e) not in done):
            for one in (pgd, attack_named("apgd-ce", settings)):
                run_and_record(one, eps)
    result["seconds"]["total"] = round(time.time() - started, 1)
    result["masking_checks"] = masking.masking_checks(result, pgd.name, STRONG_PGD.name,
                                                       eps_key(large_eps) if large_eps else None)
    return result


def load_classifier(path):
    """The logits function of a run directory (its classifier.keras), a `.keras` file, or an
    exported SavedModel (our export's model or version folder, `serving_default` with a float
    input and a `logits` output). Keras models are evaluated in float32 and inference mode."""
    if os.path.isdir(path) and os.path.exists(os.path.join(path, rundir.CONFIG)):
        if not os.path.exists(os.path.join(path, rundir.CLASSIFIER)):
            raise rundir.RunDirError(f"{path} is a run directory without {rundir.CLASSIFIER}: rerun train.py with "
                                     f"its settings to write it again from the checkpoint")
        path = os.path.join(path, rundir.CLASSIFIER)
    if path.endswith(".keras"):
        return inference_fn(models.float32_copy(rundir.load_model(path)))
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        versions = [d for d in os.listdir(path) if d.isdigit()]
        path = os.path.join(path, max(versions, key=int)) if versions else path
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"{path} is neither a run directory, a .keras file nor a SavedModel")
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    inputs = [name for name, spec in signature.structured_input_signature[1].items() if spec.dtype.is_floating]
    if len(inputs) != 1 or "logits" not in signature.structured_outputs:
        raise ValueError(f"{path}: serving_default needs one float image input and a 'logits' output")

    def logits_fn(images):
        return signature(**{inputs[0]: images})["logits"]
    logits_fn.saved_model = loaded  # keeps the model's variables alive as long as the function
    return logits_fn
