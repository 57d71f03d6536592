"""Robustness of a classifier that maps images in [0, 1] to logits, measured honestly.

`Evaluator` runs the attacks of `attacks.py` in batches, compiled, on the examples still
classified correctly, and verifies every adversarial image it counts (inside the eps-ball and
[0, 1], misclassified by the model in inference mode). `evaluate` builds a full report: clean
accuracy, robust accuracy per attack and eps, the AutoAttack-style composition (APGD-CE, then
APGD-T, then Square, each on the points still robust) and the gradient-masking checks.
"""

import dataclasses
import functools
import json
import math
import os
import time
import zlib

import keras
import numpy as np
import tensorflow as tf

from robgan_tf import attacks, data, rundir

AUTOATTACK = ("apgd-ce", "apgd-t", "square")
ATTACK_CHOICES = ("pgd", "apgd-ce", "apgd-t", "square", "autoattack")
MASKING_TOLERANCE = 0.01  # accuracy may rise by at most 1 point where it must not rise
LARGE_EPS_TOLERANCE = 0.02  # accuracy at a large eps (any image reachable) must be below 2%


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """Attack budgets: PGD steps/restarts, APGD iterations and targets, Square queries."""

    pgd_steps: int = 20
    pgd_restarts: int = 1
    apgd_steps: int = 100
    apgd_targets: int = 9
    square_queries: int = 5000
    square_p_init: float = 0.8
    batch_size: int = 500
    seed: int = 0

    @property
    def pgd_name(self):
        return pgd_name(self.pgd_steps, self.pgd_restarts)


def pgd_name(steps, restarts=1):
    return f"pgd-{steps}" + (f"x{restarts}" if restarts > 1 else "")


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
        self._pgd = compiled(functools.partial(attacks.pgd, logits))
        self._apgd = compiled(functools.partial(attacks.apgd, logits))
        self._square = compiled(functools.partial(attacks.square, logits))

    def logits(self, x):
        return np.concatenate([self._logits(tf.constant(x[i:i + self.settings.batch_size])).numpy()
                               for i in range(0, len(x), self.settings.batch_size)])

    def predict(self, x):
        return self.logits(x).argmax(-1).astype(np.int32)

    def run(self, attack, x, y, eps, todo):
        """Attacks the examples where `todo` holds. Returns (robust, x_adv): robust is `todo`
        minus the examples fooled, x_adv holds their adversarial images (clean images elsewhere)."""
        s = self.settings
        robust, x_adv = todo.copy(), x.copy()
        index = np.flatnonzero(todo)
        batches = [index[i:i + s.batch_size] for i in range(0, len(index), s.batch_size)]
        attempts = self._attempts(attack, eps, self.logits(x[:1]).shape[-1])
        bar = keras.utils.Progbar(len(batches) * len(attempts), verbose=1) if self.verbose and batches else None
        for b, rows in enumerate(batches):
            xb, yb = x[rows], y[rows]
            best = xb.copy()
            for a, (attempt, carry) in enumerate(attempts):
                left = np.flatnonzero(self.predict(best) == yb)
                if len(left):
                    seed = tf.constant([s.seed, zlib.crc32(f"{attack}/{eps_key(eps)}/{b}/{a}".encode())], tf.int64)
                    new = np.asarray(attempt(xb[left], yb[left], best[left], seed))
                    keep = slice(None) if carry else self.predict(new) != yb[left]
                    best[left[keep]] = new[keep]
                if bar:
                    bar.add(1)
            _check_in_ball(best, xb, eps)
            fooled = self.predict(best) != yb
            robust[rows[fooled]] = False
            x_adv[rows[fooled]] = best[fooled]
        return robust, x_adv

    def _attempts(self, attack, eps, num_classes):
        """The attack as (attempt, carry) pieces: each runs on the examples not yet fooled; carry
        means its output is the starting point of the next piece (Square's query budget in chunks)."""
        s, eps_t = self.settings, tf.constant(eps, tf.float32)
        if attack.startswith("pgd-"):
            steps, _, restarts = attack[4:].partition("x")
            steps, restarts = int(steps), int(restarts or 1)
            step = tf.constant(attacks.default_step_size(eps, steps), tf.float32)
            once = lambda x, y, _, seed: self._pgd(x, y, eps_t, steps, step, seed)  # noqa: E731
            return [(once, False)] * restarts
        if attack == "apgd-ce":
            return [(lambda x, y, _, seed: self._apgd(x, y, eps_t, s.apgd_steps, seed), False)]
        if attack == "apgd-t":
            if num_classes < 4:
                raise ValueError("APGD-T's targeted DLR loss needs at least 4 classes")

            def targeted(rank):
                def attempt(x, y, _, seed):
                    target = np.argsort(-self.logits(x), axis=-1)[:, rank].astype(np.int32)
                    return self._apgd(x, y, eps_t, s.apgd_steps, seed, target=tf.constant(target))
                return attempt
            return [(targeted(rank), False) for rank in range(1, min(s.apgd_targets, num_classes - 1) + 1)]
        if attack == "square":
            chunk = 250
            starts = range(0, s.square_queries - 1, chunk)  # the first query is the stripes start

            def piece(first):
                def attempt(x, y, current, seed):
                    n = tf.constant(min(chunk, s.square_queries - 1 - first))
                    return self._square(x, y, eps_t, n, seed, s.square_p_init, first_iteration=tf.constant(first),
                                        x_start=None if first == 0 else tf.constant(current),
                                        n_queries=tf.constant(s.square_queries))
                return attempt
            return [(piece(first), True) for first in starts]
        raise ValueError(f"unknown attack {attack!r}")


def _check_in_ball(x_adv, x, eps):
    """An attack that leaves the eps-ball or [0, 1] is a bug, never a result."""
    inside = np.isfinite(x_adv) & (np.abs(x_adv - x) <= eps + 1e-5) & (x_adv >= 0.0) & (x_adv <= 1.0)
    if not inside.all():
        raise AssertionError(f"an attack left the eps={eps:g} ball or [0, 1]")


def evaluate(logits_fn, x, y, eps_values, attack="autoattack", settings=AttackSettings(), check_masking=False,
             large_eps=None, verbose=True):
    """Clean and robust accuracy of a classifier on (x, y), and the gradient-masking checks.

    `attack` is one of ATTACK_CHOICES; "autoattack" also reports its parts and PGD. With
    `check_masking`, PGD and APGD-CE also run at eps/3, 2·eps/3 (of the largest eps) and at
    `large_eps`, and a stronger PGD (100 steps, 5 restarts) at each eps.
    Returns a dict: clean_accuracy, robust_accuracy {attack: {eps: acc}}, autoattack_stages,
    seconds, masking_checks, plus per-example robustness and adversarial images for pictures.
    """
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

    def run(name, eps, todo):
        if verbose:
            print(f"{name} eps={eps:.4g}: {int(todo.sum())} examples")
        t = time.time()
        robust, x_adv = evaluator.run(name, x, y, eps, todo)
        return robust, x_adv, time.time() - t

    for eps in sorted(eps_values):
        if attack == "autoattack":
            robust, _, seconds = run(settings.pgd_name, eps, correct)
            record(settings.pgd_name, eps, robust, seconds)
            robust, x_adv, stages, total = correct, x.copy(), {}, 0.0
            for part in AUTOATTACK:
                survivors, part_adv, seconds = run(part, eps, robust)
                x_adv[robust & ~survivors] = part_adv[robust & ~survivors]
                robust, total = survivors, total + seconds
                stages[part] = float(robust.mean())
                if part == "apgd-ce":  # first in the chain, so it ran on every correct example
                    record(part, eps, robust, seconds)
            record("autoattack", eps, robust, total)
            result["autoattack_stages"][eps_key(eps)] = stages
        else:
            name = settings.pgd_name if attack == "pgd" else attack
            robust, x_adv, seconds = run(name, eps, correct)
            record(name, eps, robust, seconds)
        result["adversarial"][eps_key(eps)] = x_adv
        if check_masking:
            robust, _, seconds = run(pgd_name(100, 5), eps, correct)
            record(pgd_name(100, 5), eps, robust, seconds)

    if check_masking:
        top = max(eps_values)
        done = {eps_key(e) for e in eps_values}
        extra = sorted({top / 3, 2 * top / 3} | ({large_eps} if large_eps else set()))
        for eps in (e for e in extra if eps_key(e) not in done):
            for name in (settings.pgd_name, "apgd-ce"):
                robust, _, seconds = run(name, eps, correct)
                record(name, eps, robust, seconds)
    result["seconds"]["total"] = round(time.time() - started, 1)
    result["masking_checks"] = masking_checks(result, settings.pgd_name, large_eps)
    return result


def masking_checks(result, pgd_attack, large_eps=None):
    """Signs of gradient masking in a result of `evaluate`, each check passed, failed or skipped.

    1. Robust accuracy does not rise with eps (by more than 1 point), for every attack.
    2. At `large_eps` every white-box attack brings accuracy below 2%.
    3. The black-box Square does not fool more than 1 point (of all examples) beyond what the
       white-box attacks of the composition fooled, nor, run alone, score more than 1 point below
       the best white-box attack.
    4. Stronger attacks (more PGD steps and restarts, APGD) are not more than 1 point above PGD.
    """
    acc = result["robust_accuracy"]
    checks = []

    def check(name, failures, skipped_why=None):
        passed = None if skipped_why else not failures
        checks.append({"check": name, "passed": passed,
                       "detail": skipped_why or ("; ".join(failures) if failures else "ok")})

    rises = []
    for attack, by_eps in acc.items():
        curve = sorted((float(e), a) for e, a in by_eps.items())
        rises += [f"{attack}: {a:.3f} at eps={e:g} > {b:.3f} at eps={d:g}"
                  for (d, b), (e, a) in zip(curve, curve[1:]) if a > b + MASKING_TOLERANCE]
    several = any(len(v) > 1 for v in acc.values())
    check("accuracy falls as eps grows", rises, None if several else "only one eps evaluated")

    large = eps_key(large_eps) if large_eps else None
    white = [(a, v[large]) for a, v in acc.items() if large in v and a not in ("square", "autoattack")]
    check(f"white-box accuracy < {LARGE_EPS_TOLERANCE:.0%} at a large eps",
          [f"{a}: {v:.3f} at eps={large_eps:g}" for a, v in white if v > LARGE_EPS_TOLERANCE],
          None if white else "no large eps evaluated (use --check-masking)")

    beaten = []
    for e, stages in result["autoattack_stages"].items():
        only_square = stages["apgd-t"] - stages["square"]
        if only_square > MASKING_TOLERANCE:
            beaten.append(f"eps={e}: Square fooled {only_square:.1%} of all examples where APGD-CE and APGD-T "
                          f"failed")
    compared = bool(result["autoattack_stages"])
    for e, square_acc in acc.get("square", {}).items():
        white_min = min((v[e] for a, v in acc.items() if a not in ("square", "autoattack") and e in v), default=None)
        compared |= white_min is not None
        if white_min is not None and square_acc < white_min - MASKING_TOLERANCE:
            beaten.append(f"eps={e}: Square alone {square_acc:.3f} < white-box {white_min:.3f}")
    check("black-box Square does not beat the white-box attacks", beaten,
          None if compared else "no Square and white-box results at the same eps")

    stronger = []
    for attack in (pgd_name(100, 5), "apgd-ce"):
        for e, v in acc.get(attack, {}).items():
            base = acc.get(pgd_attack, {}).get(e)
            if attack != pgd_attack and base is not None and v > base + MASKING_TOLERANCE:
                stronger.append(f"eps={e}: {attack} {v:.3f} > {pgd_attack} {base:.3f}")
    compared = any(attack in acc for attack in (pgd_name(100, 5), "apgd-ce")) and pgd_attack in acc
    check("stronger attacks do not raise accuracy", stronger, None if compared else "only one white-box attack run")
    return checks


def load_classifier(path):
    """The logits function of a run directory (its classifier.keras), a `.keras` file, or an
    exported SavedModel (our export's model or version folder, `serving_default` with a float
    input and a `logits` output). Keras models are evaluated in float32 and inference mode."""
    if os.path.isdir(path) and os.path.exists(os.path.join(path, rundir.CLASSIFIER)):
        path = os.path.join(path, rundir.CLASSIFIER)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no model file {path}")
        return inference_fn(float32_copy(keras.saving.load_model(path)))
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


def float32_copy(model):
    """The model itself, or a float32 copy of it when it computes in float16/bfloat16."""
    config = keras.saving.serialize_keras_object(model)
    text = json.dumps(config)
    if "mixed_float16" not in text and "mixed_bfloat16" not in text:
        return model
    text = text.replace('"mixed_float16"', '"float32"').replace('"mixed_bfloat16"', '"float32"')
    copy = keras.saving.deserialize_keras_object(json.loads(text))
    copy.set_weights(model.get_weights())
    return copy
