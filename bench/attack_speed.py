"""Our compiled attacks against ART and foolbox, side by side: python bench/attack_speed.py --run RUN_DIR

On one trained run's classifier (float32, inference mode) and one stratified subset of its test set,
with the run's eps (config.json), it times:
  apgd-ce     ours (evaluation.APGD, through Evaluator.run as `evaluate` runs it) against ART's
              AutoProjectedGradientDescent (TensorFlowV2Classifier, loss_type="cross_entropy", the same
              eps, initial step 2*eps as ours, the same iterations, one restart, untargeted, our batch size);
  pgd         ours (evaluation.PGD: random start, step 2.5*eps/steps, 1 restart) against foolbox's LinfPGD
              (TensorFlowModel, the same steps, the same absolute step, random start), fed the same batches;
  autoattack  ours, APGD-CE -> Square, against ART's AutoAttack class given the same two attacks (ART
              APGD-CE as above, ART SquareAttack with the same queries and p_init, one restart),
              untargeted. Our full composition (APGD-CE -> APGD-T -> Square) is timed too, but ART's
              AutoAttack class cannot run it (see AUTOATTACK_GAP), so it has no ART counterpart.
              Square gets 100 queries by default (the studies' evaluations use 1000): ART's Square makes
              three forward passes per query, and 1000 of them would not fit the 15-minute budget.
and the limit of each gradient attack: the forward+backward passes it cannot do without (APGD: one at its
start and one per iteration; PGD: one per step) x the time of one compiled forward+backward pass (input
gradient of the summed cross-entropy) over the same batches (the examples classified correctly, in
batches of --batch); ours is reported as a multiple of it. A pass is timed as attacks run it: --chain
passes back to back in one compiled loop, each starting from the last one's signed step, so none can be
skipped or hoisted; the median of --repeats such chains, divided by --chain. (Before 54ec64b each pass
was timed as a call of its own, which on MNIST cost 1.37x a pass inside the loop and put ours at 0.74x
the "limit".) Our APGD drops the examples it has fooled (attacks.apgd's drop_fooled), so it makes fewer
passes than the limit counts; it is also timed with every example kept to the last iteration
(drop_fooled=False, the same images returned), whose time over the limit is what the acceptance checks:
the cost of our loop per pass. The comparison with ART is made both ways: as evaluations run ours (part
of its lead is the passes it skips) and with every example kept (the loop alone).

Every side attacks only the examples the model classifies correctly, and every adversarial image
counted is checked (inside the eps-ball and [0, 1], misclassified). Timings exclude a warm-up: each
side first runs the same attack (ours: each of its compiled pieces; ART and foolbox: the attack
object) on --warmup and --warmup+1 images, so that every tf.function is traced for a variable batch
size before the clock starts; the script counts traces during the timed runs and says if any happened.

ART and foolbox get the model in two ways, each timed (--their-model): "keras", the Keras model
itself, which they call eagerly (their documented use), and "function", the model wrapped in a
tf.function, so that their forward and backward passes are compiled too and only their numpy loop
differs from ours. The acceptance of issue 17 is checked against each. ART's AutoAttack gets only
"function" by default (--autoattack-their-model), its faster set-up, to fit the time budget.

Budget (2-core CPU, estimated from cut runs before the second APGD-CE run was added, which adds about one
APGD-CE's time): 8-10 minutes for 1000 MNIST or CIFAR-10 images with the defaults on an otherwise idle
machine, about 13 with one other busy process; --their-model function (or keras) alone saves 2-4 minutes,
--parts apgd-ce pgd about 5.

It prints a table (method | ours s | theirs s | ratio | ours acc | theirs acc) and the limit lines,
checks issue 17's acceptance, and writes JSON (and with --markdown a BENCHMARKS.md section) with the
machine (lscpu), the versions and the command. --smoke: 64 images and cut budgets, to check it works.
--profile: also profiles one ART APGD-CE run (function model) to show where its time goes: in the
estimator calls that run the model, and in ART's own Python and numpy.
Run it on an otherwise idle machine: other processes make every number slower and noisier (the
JSON records the load average before and after).
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from robgan_tf import attacks, data, evaluation, models, rundir  # noqa: E402
from robgan_tf.config import AttackSettings  # noqa: E402

from machine import machine_info  # noqa: E402  (bench/, the script's directory)

tf.get_logger().setLevel("ERROR")  # ART's attacks retrace its compiled forward pass, and say so at length
warnings.filterwarnings("ignore", message="PyTorch not found")  # ART's, on import

AUTOATTACK_GAP = (
    "ART's AutoAttack class cannot run our composition APGD-CE -> APGD-T -> Square: its targeted pass runs "
    "every attack in its list, after running it untargeted, against each of the nb_classes-1 other classes "
    "in index order (ours: APGD-T only, against the top-k classes by logit), and ART's targeted "
    "difference-of-logits-ratio loss is not Croce & Hein's targeted DLR. So ART is compared on the "
    "untargeted part both can run, APGD-CE -> Square; our full composition's time has no ART counterpart.")
ACCEPT_SPEEDUP, ACCEPT_ACC_POINTS, ACCEPT_LIMIT = 3.0, 0.5, 1.15  # issue 17, section 2


# ---------------------------------------------------------------- the machine and the versions

def versions():
    import art
    import eagerpy
    import foolbox
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "adversarial-robustness-toolbox": art.__version__, "foolbox": foolbox.__version__,
            "eagerpy": eagerpy.__version__}


# ---------------------------------------------------------------- helpers

def load(args):
    config, _ = rundir.read_config(args.run)
    path = args.model if args.model else os.path.join(args.run, rundir.CLASSIFIER)
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(args.run, path)
    if not os.path.exists(path) and not args.model and os.path.exists(os.path.join(args.run, rundir.BEST_CLASSIFIER)):
        path = os.path.join(args.run, rundir.BEST_CLASSIFIER)
    model = models.float32_copy(rundir.load_model(path))  # what evaluation.load_classifier evaluates
    dataset = data.load(config.dataset, args.data_dir)
    x, y = data.subset(dataset.x_test, dataset.y_test, args.n, seed=args.seed)
    return config, path, model, data.to_float(x).numpy(), np.asarray(y, np.int32), dataset.num_classes


def batches_of(index, size):
    return [index[i:i + size] for i in range(0, len(index), size)]


def fooled_inside(predict, x_adv, x, y, eps):
    """Which adversarial images count: misclassified, inside the eps-ball and [0, 1]. Also the
    number that left the ball or [0, 1] (any is a bug of that attack)."""
    inside = (np.isfinite(x_adv) & (np.abs(x_adv - x) <= eps + 1e-5) & (x_adv >= 0) & (x_adv <= 1)).reshape(
        len(x), -1).all(1)
    return (predict(x_adv) != y) & inside, int((~inside).sum())


def load_avg():
    return round(os.getloadavg()[0], 2)


class Clock:
    """Wall and process CPU seconds (all threads) of a block. CPU seconds are less sensitive to
    other processes on the machine, wall seconds are what the table reports."""

    def __enter__(self):
        self.load = load_avg()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu

    def record(self):
        return {"seconds": round(self.wall, 2), "cpu_seconds": round(self.cpu, 2), "load_avg_before": self.load}


class Traces:
    """Counts traces of the given tf.functions, to show none happened in a timed run."""

    def __init__(self, *functions):
        self.functions = functions

    def count(self):
        return sum(f.experimental_get_tracing_count() for f in self.functions)


def their_model(model, kind):
    """The model ART and foolbox call: the Keras model itself, or wrapped in a tf.function."""
    if kind == "keras":
        return model
    compiled = tf.function(lambda images, training: model(images, training=training), reduce_retracing=True)

    def call(images, training=False):
        return compiled(images, training)
    call.tracing_count = compiled.experimental_get_tracing_count
    return call


def their_traces(model_fn, art_attack=None):
    """Traces so far of the tf.functions on their side: our wrapper (--their-model function) and
    the compiled forward pass of each ART estimator involved."""
    count = model_fn.tracing_count() if hasattr(model_fn, "tracing_count") else 0
    if art_attack is not None:
        estimators = {id(a.estimator): a.estimator for a in [art_attack, *getattr(art_attack, "attacks", [])]}
        count += sum(e._forward_pass.experimental_get_tracing_count() for e in estimators.values())
    return count


# ---------------------------------------------------------------- ours

def warm_ours(evaluator, attack, x, y, warm, eps, num_classes, sizes):
    """Runs every compiled piece of `attack` (and the model's logits) at two batch sizes, on the
    rows `warm`, so that each tf.function has its variable-batch trace before timing."""
    parts = attack.parts if isinstance(attack, evaluation.AutoAttack) else (attack,)
    for size in sizes:
        xs, ys = x[warm[:size]], y[warm[:size]]
        evaluator.predict(xs)
        for part in parts:
            for attempt, _ in part.pieces(evaluator, eps, num_classes):
                np.asarray(attempt(xs, ys, xs.copy(), tf.constant([evaluator.settings.seed, 1], tf.int64)))


def keeping_every_example(logits_fn, settings):
    """An Evaluator whose APGD keeps every example in its batch to the last iteration
    (drop_fooled=False): the same images, and every pass the limit counts."""
    evaluator = evaluation.Evaluator(logits_fn, settings, verbose=False)
    logits = lambda images: tf.cast(logits_fn(images), tf.float32)  # noqa: E731  (as Evaluator's)
    evaluator.apgd = tf.function(functools.partial(attacks.apgd, logits, drop_fooled=False), reduce_retracing=True)
    return evaluator


def run_ours(evaluator, attack, x, y, eps, todo):
    """`attack` as evaluation.evaluate runs it (a composition: each part on what the last left
    robust). Returns (robust, Clock, {part: robust accuracy after it})."""
    stages = {}
    with Clock() as clock:
        if isinstance(attack, evaluation.AutoAttack):
            robust = todo
            for part in attack.parts:
                robust, _ = evaluator.run(part, x, y, eps, robust)
                stages[part.name] = float(robust.mean())
        else:
            robust, _ = evaluator.run(attack, x, y, eps, todo)
    return robust, clock, stages


# ---------------------------------------------------------------- the limit

def chained_passes(logits_fn):
    """A compiled loop of `n` forward+backward passes, each from the last one's signed step, as an
    attack's loop runs them (no pass can be skipped, none hoisted out of the loop)."""
    @tf.function(reduce_retracing=True)
    def chain(x, y, n):
        def one_pass(i, x_adv):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = tf.reduce_sum(attacks.cross_entropy(tf.cast(logits_fn(x_adv), tf.float32), y))
            return i + 1, tf.clip_by_value(x_adv + 1e-3 * tf.sign(tape.gradient(loss, x_adv)), 0.0, 1.0)
        return tf.while_loop(lambda i, _: i < n, one_pass, (tf.constant(0), x))[1]
    return chain


def pass_seconds(chain, x, y, batches, sizes, repeats, length):
    """Per batch, the wall and CPU seconds of one compiled forward+backward pass inside a loop: the
    median of `repeats` chains of `length` passes (after warm-up), divided by `length`; and the
    traces that happened while timing."""
    for size in sizes:
        chain(tf.constant(x[:size]), tf.constant(y[:size]), tf.constant(2)).numpy()
    before = chain.experimental_get_tracing_count()
    out = []
    for rows in batches:
        xb, yb, n = tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(length)
        chain(xb, yb, tf.constant(2)).numpy()
        clocks = []
        for _ in range(repeats):
            with Clock() as clock:
                chain(xb, yb, n).numpy()
            clocks.append(clock)
        out.append((statistics.median(c.wall for c in clocks) / length,
                    statistics.median(c.cpu for c in clocks) / length))
    return out, chain.experimental_get_tracing_count() - before


# ---------------------------------------------------------------- theirs

def art_classifier(model_fn, x, num_classes):
    from art.estimators.classification import TensorFlowV2Classifier
    return TensorFlowV2Classifier(model=model_fn, nb_classes=num_classes, input_shape=x.shape[1:],
                                  loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
                                  clip_values=(0.0, 1.0))


def art_apgd(classifier, eps, steps, batch):
    from art.attacks.evasion import AutoProjectedGradientDescent
    return AutoProjectedGradientDescent(classifier, norm=np.inf, eps=float(eps), eps_step=2.0 * float(eps),
                                        max_iter=steps, targeted=False, nb_random_init=1, batch_size=batch,
                                        loss_type="cross_entropy", verbose=False)


def art_autoattack(classifier, eps, steps, queries, p_init, batch):
    from art.attacks.evasion import AutoAttack, SquareAttack
    square = SquareAttack(classifier, norm=np.inf, max_iter=queries - 1, eps=float(eps), p_init=p_init,
                          nb_restarts=1, batch_size=batch, verbose=False)
    return AutoAttack(classifier, norm=np.inf, eps=float(eps), eps_step=2.0 * float(eps),
                      attacks=[art_apgd(classifier, eps, steps, batch), square], batch_size=batch, targeted=False)


def warm_art(attack, x, y, warm, seed, sizes, warm_iterations=5):
    """Runs `attack` (and each part of a composition) on the first `sizes` of the rows `warm`
    (examples classified correctly, so that every part runs) with `warm_iterations` (ART's loops
    are Python: the number of iterations changes nothing compiled)."""
    restore = {}
    for sub in getattr(attack, "attacks", [attack]):
        restore[sub] = sub.max_iter
        sub.set_params(max_iter=min(sub.max_iter, warm_iterations))
    for part in [*getattr(attack, "attacks", []), attack]:  # each part of a composition, at both sizes
        for size in sizes:
            np.random.seed(seed)
            part.generate(x[warm[:size]], y[warm[:size]])
    for sub, iterations in restore.items():
        sub.set_params(max_iter=iterations)


def run_art(attack, model_fn, x, y, warm, seed, sizes):
    """The warm-up (warm_art), then the timed run on all of x. Returns (x_adv, Clock, traces while
    timed)."""
    warm_art(attack, x, y, warm, seed, sizes)
    np.random.seed(seed)
    before = their_traces(model_fn, attack)
    with Clock() as clock:
        x_adv = attack.generate(x.copy(), y)
    return x_adv, clock, their_traces(model_fn, attack) - before


MODEL_CALLS = ("predict", "loss_gradient", "compute_loss", "class_gradient")  # ART estimator methods that run the model
ART_WRAPPER = "replacement_function"  # ART's InputFilter metaclass wraps predict in this, called by the attack


def profile_art(attack, x, y, seed):
    """cProfile of one (already warmed-up) ART run of `attack` on x: its wall seconds, and the
    seconds and calls of each estimator method that runs the model, as called by ART's attack code
    (directly, or through ART's input-filter wrapper), so nested calls are not counted twice. The
    rest is ART's own Python and numpy. cProfile slows Python-heavy code, so the rest is an upper
    bound."""
    import cProfile
    import pstats
    np.random.seed(seed)
    profiler = cProfile.Profile()
    with Clock() as clock:
        profiler.runcall(attack.generate, x.copy(), y)
    model = {}
    for (path, _, name), (_, _, _, _, callers) in pstats.Stats(profiler).stats.items():
        if name not in MODEL_CALLS or os.path.join("art", "estimators") not in path:
            continue
        direct = [(calls, cumulative) for (caller, _, caller_name), (calls, _, _, cumulative) in callers.items()
                  if os.path.join("art", "attacks") in caller or caller_name == ART_WRAPPER]
        if direct:
            model[name] = {"calls": sum(c for c, _ in direct), "seconds": round(sum(t for _, t in direct), 2)}
    in_model = sum(m["seconds"] for m in model.values())
    return {"seconds": round(clock.wall, 2), "model_calls": model, "rest_seconds": round(clock.wall - in_model, 2)}


def run_foolbox(model_fn, x, y, eps, steps, step, batches, warm, seed, sizes):
    """foolbox's LinfPGD on the same batches as ours. Returns (x_adv, Clock, traces while timed)."""
    import foolbox
    fmodel = foolbox.TensorFlowModel(model_fn, bounds=(0.0, 1.0))
    attack = foolbox.attacks.LinfPGD(abs_stepsize=float(step), steps=steps, random_start=True)
    # labels as int64, the dtype of the model's argmax: eagerpy's dtype promotion calls
    # np.find_common_type, which NumPy 2 removed, whenever the two differ
    labels = y.astype(np.int64)

    def attack_batch(rows):
        _, clipped, success = attack(fmodel, tf.constant(x[rows]), tf.constant(labels[rows]), epsilons=float(eps))
        return clipped.numpy(), success.numpy()

    for size in sizes:
        attack_batch(warm[:size])
    keras.utils.set_random_seed(seed)
    before = their_traces(model_fn)
    with Clock() as clock:
        results = [attack_batch(rows) for rows in batches]
    retraced = their_traces(model_fn) - before
    x_adv = x.copy()
    for rows, (clipped, _) in zip(batches, results):
        x_adv[rows] = clipped
    return x_adv, clock, retraced


# ---------------------------------------------------------------- the benchmark

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run directory of train.py (its config gives eps and dataset)")
    p.add_argument("--model", help="the .keras classifier (default: the run's classifier.keras, else "
                                   "classifier_best.keras); a name inside the run directory or a path")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--n", type=int, help="stratified test images (default 1000; --smoke: 64)")
    p.add_argument("--batch", type=int, help="attack batch size, ours and theirs (default 500; --smoke: 32)")
    p.add_argument("--apgd-steps", type=int, help="APGD iterations (default 100; --smoke: 10)")
    p.add_argument("--pgd-steps", type=int, help="PGD steps (default 20; --smoke: 5)")
    p.add_argument("--apgd-targets", type=int, help="APGD-T targets in our full composition (default 3, as the "
                                                    "studies' evaluations; --smoke: 1)")
    p.add_argument("--square-queries", type=int, help="Square queries in the compositions (default 100; the "
                                                      "studies' evaluations use 1000; --smoke: 20)")
    p.add_argument("--square-p-init", type=float, default=0.8)
    p.add_argument("--parts", nargs="+", default=["apgd-ce", "pgd", "autoattack"],
                   choices=["apgd-ce", "pgd", "autoattack"])
    p.add_argument("--their-model", nargs="+", default=["keras", "function"], choices=["keras", "function"],
                   help="how ART and foolbox get the model for apgd-ce and pgd: the Keras model (eager calls) "
                        "and/or wrapped in a tf.function; each one given is timed")
    p.add_argument("--autoattack-their-model", nargs="+", default=["function"], choices=["keras", "function"],
                   help="the same for ART's AutoAttack (default: function only, ART's faster set-up, to fit the "
                        "time budget)")
    p.add_argument("--warmup", type=int, default=8, help="warm-up batch sizes: this and one more image")
    p.add_argument("--repeats", type=int, default=3, help="timed chains of passes per batch (median)")
    p.add_argument("--chain", type=int, default=20, help="forward+backward passes per timed chain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="output (default bench/results/attack_speed-DATASET.json; --smoke: a temp file)")
    p.add_argument("--markdown", help="also write a BENCHMARKS.md section to this file")
    p.add_argument("--profile", action="store_true", help="with apgd-ce in --parts, also profile ART's APGD-CE "
                                                          "(function model, cProfile): where its time goes")
    p.add_argument("--smoke", action="store_true", help="a quick check that everything runs: 64 images, cut "
                                                        "budgets; its numbers mean nothing")
    args = p.parse_args(argv)
    smoke = args.smoke
    for name, full, quick in (("n", 1000, 64), ("batch", 500, 32), ("apgd_steps", 100, 10), ("pgd_steps", 20, 5),
                              ("apgd_targets", 3, 1), ("square_queries", 100, 20)):
        if getattr(args, name) is None:
            setattr(args, name, quick if smoke else full)
    command = "python bench/attack_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started_all = time.time()
    load_before = load_avg()

    config, model_path, model, x, y, num_classes = load(args)
    eps = float(config.eps)
    keras.utils.set_random_seed(args.seed)
    settings = AttackSettings(pgd_steps=args.pgd_steps, pgd_restarts=1, apgd_steps=args.apgd_steps,
                              apgd_targets=args.apgd_targets, square_queries=args.square_queries,
                              square_p_init=args.square_p_init, batch_size=args.batch, seed=args.seed)
    logits_fn = evaluation.inference_fn(model)
    evaluator = evaluation.Evaluator(logits_fn, settings, verbose=False)
    every_example = keeping_every_example(logits_fn, settings)
    sizes = (args.warmup, args.warmup + 1)
    predict = evaluator.predict
    predict(x[:sizes[0]]), predict(x[:sizes[1]])
    correct = predict(x) == y
    batches = batches_of(np.flatnonzero(correct), args.batch)
    warm = np.flatnonzero(correct)  # warm-ups run on examples classified correctly, as the timed runs
    n = len(y)
    print(f"{config.dataset}: {model_path}, eps={eps:.4g}, {n} test images, {int(correct.sum())} classified "
          f"correctly ({correct.mean():.1%}), {len(batches)} batch(es) of <= {args.batch}"
          + (" [SMOKE: budgets cut, numbers mean nothing]" if smoke else ""), flush=True)

    rows, limits, notes = [], {}, []
    result = {"command": command, "smoke": smoke, "machine": machine_info(), "versions": versions(),
              "run": args.run, "model": model_path, "dataset": config.dataset, "eps": eps, "n": n, "seed": args.seed,
              "batch": args.batch, "chain": args.chain, "clean_accuracy": float(correct.mean()),
              "warmup_sizes": list(sizes),
              "settings": {"apgd_steps": args.apgd_steps, "pgd_steps": args.pgd_steps,
                           "pgd_step_size": attacks.default_step_size(eps, args.pgd_steps),
                           "apgd_targets": args.apgd_targets, "square_queries": args.square_queries,
                           "square_p_init": args.square_p_init, "their_model": args.their_model,
                           "autoattack_their_model": args.autoattack_their_model},
              "rows": rows, "limits": limits, "notes": notes}

    def measure_ours(attack, todo=correct, label=None, before_clock=None, on=evaluator):
        """Warms `attack` up, times it on `todo` with the Evaluator `on`; `before_clock` (a record) is
        time already spent on the examples (the composition's APGD-CE) and is added."""
        label = label or attack.name
        warm_ours(on, attack, x, y, warm, eps, num_classes, sizes)
        traces = Traces(on._logits, on.pgd, on.apgd, on.square)
        before = traces.count()
        robust, clock, stages = run_ours(on, attack, x, y, eps, todo)
        retraced = traces.count() - before
        if retraced:
            notes.append(f"ours {label}: {retraced} tf.function trace(s) during the timed run")
        record = clock.record()
        if before_clock:
            record["seconds"] = round(record["seconds"] + before_clock["seconds"], 2)
            record["cpu_seconds"] = round(record["cpu_seconds"] + before_clock["cpu_seconds"], 2)
        print(f"  ours   {label:32s} {record['seconds']:8.1f} s  robust {robust.mean():.2%}", flush=True)
        return {**record, "robust_accuracy": float(robust.mean()), "retraces": retraced,
                **({"stages": stages} if stages else {})}, robust

    def measure_theirs(label, x_adv, clock, retraced):
        fooled, outside = fooled_inside(predict, x_adv, x, y, eps)
        robust = correct & ~fooled
        if outside:
            notes.append(f"{label}: {outside} adversarial image(s) outside the eps-ball or [0, 1], not counted")
        if retraced:
            notes.append(f"{label}: {retraced} tf.function trace(s) during the timed run")
        print(f"  theirs {label:32s} {clock.wall:8.1f} s  robust {robust.mean():.2%}", flush=True)
        return {**clock.record(), "robust_accuracy": float(robust.mean()), "outside_ball": outside,
                "retraces": retraced}

    def add_row(method, library, ours, theirs, kind):
        row = {"method": method, "library": library, "their_model": kind, "ours": ours, "theirs": theirs}
        if theirs and ours:
            row["ratio"] = round(theirs["seconds"] / max(ours["seconds"], 1e-9), 2)
            row["cpu_ratio"] = round(theirs["cpu_seconds"] / max(ours["cpu_seconds"], 1e-9), 2)
            row["accuracy_difference_points"] = round(100 * (theirs["robust_accuracy"] - ours["robust_accuracy"]), 2)
        rows.append(row)

    def add_limit(name, passes, ours, shipped=None):
        """The limit of `passes` passes, and `ours` (every pass made) over it; `shipped`, if given, is
        the attack as evaluations run it (fewer passes), over the same limit."""
        limit = limits[name] = {"passes": passes, "seconds": round(passes * limits["pass_seconds"], 2),
                                "cpu_seconds": round(passes * limits["pass_cpu_seconds"], 2)}
        limit["ours_over_limit"] = round(ours["seconds"] / limit["seconds"], 3)
        limit["ours_over_limit_cpu"] = round(ours["cpu_seconds"] / limit["cpu_seconds"], 3)
        if shipped:
            limit["shipped_over_limit"] = round(shipped["seconds"] / limit["seconds"], 3)

    if "apgd-ce" in args.parts or "pgd" in args.parts:
        per_batch, retraced = pass_seconds(chained_passes(logits_fn), x, y, batches, sizes, args.repeats,
                                           args.chain)
        limits["pass_seconds_per_batch"] = [round(wall, 4) for wall, _ in per_batch]
        limits["pass_seconds"] = round(sum(wall for wall, _ in per_batch), 4)
        limits["pass_cpu_seconds"] = round(sum(cpu for _, cpu in per_batch), 4)
        if retraced:
            notes.append(f"forward+backward pass: {retraced} trace(s) during timing")
        print(f"one compiled forward+backward pass over the {len(batches)} batch(es), in a loop of {args.chain}: "
              f"{limits['pass_seconds']:.3f} s", flush=True)

    if "apgd-ce" in args.parts or "autoattack" in args.parts:
        print(f"APGD-CE, {args.apgd_steps} iterations", flush=True)
        ours_apgd, robust_ce = measure_ours(evaluation.APGD(args.apgd_steps))
    if "apgd-ce" in args.parts:
        ours_every, robust_every = measure_ours(evaluation.APGD(args.apgd_steps), label="apgd-ce, no example dropped",
                                                on=every_example)
        if (robust_every != robust_ce).any():
            notes.append(f"ours apgd-ce: {int((robust_every != robust_ce).sum())} example(s) robust one way and "
                         f"not the other (dropping the fooled examples or not)")
        add_limit("apgd-ce", args.apgd_steps + 1, ours_every, ours_apgd)  # its start's pass, then one per iteration
        art_attacks = {}  # by model kind: run (and so warmed up) once, the function model's profiled after
        for kind in args.their_model:
            model_fn = their_model(model, kind)
            art_attacks[kind] = art_apgd(art_classifier(model_fn, x, num_classes), eps, args.apgd_steps, args.batch)
            x_adv, clock, retraced = run_art(art_attacks[kind], model_fn, x, y, warm, args.seed, sizes)
            theirs = measure_theirs(f"ART apgd-ce ({kind} model)", x_adv, clock, retraced)
            add_row("apgd-ce", "ART AutoProjectedGradientDescent", ours_apgd, theirs, kind)
            add_row("apgd-ce, no example dropped", "ART AutoProjectedGradientDescent", ours_every, theirs, kind)
        if args.profile:
            attack = art_attacks.get("function")
            if attack is None:  # not timed above: built and warmed up for the profile alone
                attack = art_apgd(art_classifier(their_model(model, "function"), x, num_classes), eps,
                                  args.apgd_steps, args.batch)
                warm_art(attack, x, y, warm, args.seed, sizes)
            result["art_profile"] = {"attack": "apgd-ce", "their_model": "function",
                                     **profile_art(attack, x, y, args.seed)}

    if "pgd" in args.parts:
        print(f"PGD-{args.pgd_steps}", flush=True)
        ours_pgd, _ = measure_ours(evaluation.PGD(args.pgd_steps, 1))
        add_limit("pgd", args.pgd_steps, ours_pgd)
        for kind in args.their_model:
            x_adv, clock, retraced = run_foolbox(their_model(model, kind), x, y, eps, args.pgd_steps,
                                                 attacks.default_step_size(eps, args.pgd_steps), batches,
                                                 warm, args.seed, sizes)
            add_row(f"pgd-{args.pgd_steps}", "foolbox LinfPGD", ours_pgd,
                    measure_theirs(f"foolbox pgd ({kind} model)", x_adv, clock, retraced), kind)

    if "autoattack" in args.parts:
        print(f"autoattack (Square {args.square_queries} queries, APGD-T {args.apgd_targets} targets)", flush=True)
        square = evaluation.Square(args.square_queries, args.square_p_init)
        apgd_t = evaluation.APGD(args.apgd_steps, args.apgd_targets)
        # APGD-CE, the first part of both compositions, is the run timed above (same seeds, same
        # batches, so the same result as inside the composition): its time is added, not spent again
        ours_ce_square, _ = measure_ours(evaluation.AutoAttack((square,)), robust_ce, "apgd-ce -> square", ours_apgd)
        ours_full, _ = measure_ours(evaluation.AutoAttack((apgd_t, square)), robust_ce,
                                    f"apgd-ce -> apgd-t({args.apgd_targets}) -> square", ours_apgd)
        for record in (ours_ce_square, ours_full):
            record["stages"] = {"apgd-ce": ours_apgd["robust_accuracy"], **record["stages"]}
        for kind in args.autoattack_their_model:
            model_fn = their_model(model, kind)
            attack = art_autoattack(art_classifier(model_fn, x, num_classes), eps, args.apgd_steps,
                                    args.square_queries, args.square_p_init, args.batch)
            x_adv, clock, retraced = run_art(attack, model_fn, x, y, warm, args.seed, sizes)
            add_row("autoattack: apgd-ce -> square", "ART AutoAttack(attacks=[APGD-CE, Square])", ours_ce_square,
                    measure_theirs(f"ART autoattack ({kind} model)", x_adv, clock, retraced), kind)
        add_row(f"autoattack: apgd-ce -> apgd-t({args.apgd_targets}) -> square", "none (see autoattack_gap)",
                ours_full, None, None)
        result["autoattack_gap"] = AUTOATTACK_GAP
        notes.append(AUTOATTACK_GAP)

    result["acceptance"] = acceptance(rows, limits, smoke)
    result["load_avg"] = {"before": load_before, "after": load_avg()}
    result["wall_seconds"] = round(time.time() - started_all, 1)
    text = report(result)
    print(text)
    out = args.json or (os.path.join(tempfile.gettempdir(), f"attack_speed-{config.dataset}-smoke.json") if smoke
                        else os.path.join("bench", "results", f"attack_speed-{config.dataset}.json"))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(result, text))
    print(f"wrote {out}" + (f" and {args.markdown}" if args.markdown else "") + f" ({result['wall_seconds']:.0f} s)")
    return 0


def acceptance(rows, limits, smoke):
    """Issue 17's acceptance for the APGD-CE comparison (per their-model kind)."""
    out = {"thresholds": {"art_over_ours_at_least": ACCEPT_SPEEDUP, "accuracy_within_points": ACCEPT_ACC_POINTS,
                          "ours_over_limit_at_most": ACCEPT_LIMIT}, "smoke": smoke}
    for row in rows:
        if row["method"] != "apgd-ce" or not row.get("theirs"):
            continue
        speed_ok = row["ratio"] >= ACCEPT_SPEEDUP
        acc_ok = abs(row["accuracy_difference_points"]) <= ACCEPT_ACC_POINTS
        out[f"apgd-ce vs ART ({row['their_model']} model)"] = {"speedup": row["ratio"], "speedup_ok": speed_ok,
                                                         "speedup_cpu": row["cpu_ratio"],
                                                         "accuracy_difference_points":
                                                             row["accuracy_difference_points"],
                                                         "accuracy_ok": acc_ok}
    if "apgd-ce" in limits:
        value = limits["apgd-ce"]["ours_over_limit"]
        out["apgd-ce vs limit"] = {"ours_over_limit": value, "ok": value <= ACCEPT_LIMIT}
    return out


def report(result):
    head = ("method", "theirs", "ours s", "theirs s", "ratio", "ours acc", "theirs acc", "ratio of CPU s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        theirs = r["theirs"]
        lines.append("| " + " | ".join([
            r["method"], r["library"] + (f" ({r['their_model']} model)" if r["their_model"] else ""),
            f"{r['ours']['seconds']:.1f}", f"{theirs['seconds']:.1f}" if theirs else "n/a",
            f"{r['ratio']:.2f}x" if theirs else "n/a", f"{100 * r['ours']['robust_accuracy']:.1f}%",
            f"{100 * theirs['robust_accuracy']:.1f}%" if theirs else "n/a",
            f"{r['cpu_ratio']:.2f}x" if theirs else "n/a"]) + " |")
    limits = result["limits"]
    if "pass_seconds" in limits:
        lines.append(f"\none compiled forward+backward pass (CE input gradient) over the same batches, timed in "
                     f"a loop of {result['chain']}: {limits['pass_seconds']:.3f} s ({limits['pass_cpu_seconds']:.3f} "
                     f"CPU s)")
    for name in ("apgd-ce", "pgd"):
        if name in limits:
            lim = limits[name]
            every = " with every example in every pass" if "shipped_over_limit" in lim else ""
            lines.append(f"limit {name}: {lim['passes']} x pass = {lim['seconds']:.1f} s; ours{every} / limit = "
                         f"{lim['ours_over_limit']:.3f} (in CPU seconds: {lim['ours_over_limit_cpu']:.3f})"
                         + (f"; ours as evaluations run it (fooled examples dropped) / limit = "
                            f"{lim['shipped_over_limit']:.3f}" if every else ""))
    acc = result["acceptance"]
    for key, value in acc.items():
        if key.startswith("apgd-ce vs ART"):
            lines.append(f"acceptance {key}: {value['speedup']:.2f}x faster (>= {ACCEPT_SPEEDUP:g}: "
                         f"{'yes' if value['speedup_ok'] else 'NO'}; in CPU seconds {value['speedup_cpu']:.2f}x), "
                         f"accuracy difference "
                         f"{value['accuracy_difference_points']:+.1f} points (within {ACCEPT_ACC_POINTS:g}: "
                         f"{'yes' if value['accuracy_ok'] else 'NO'})")
        elif key == "apgd-ce vs limit":
            lines.append(f"acceptance apgd-ce vs limit, every example in every pass: {value['ours_over_limit']:.3f} "
                         f"(<= {ACCEPT_LIMIT:g}: "
                         f"{'yes' if value['ok'] else 'NO'})")
    profile = result.get("art_profile")
    if profile:
        calls = "; ".join(f"{name} {m['calls']} calls, {m['seconds']:.1f} s"
                          for name, m in profile["model_calls"].items()) or "none found"
        lines.append(f"profile of ART's {profile['attack']} ({profile['their_model']} model, cProfile): "
                     f"{profile['seconds']:.1f} s; running the model: {calls}; ART's own Python and numpy: "
                     f"{profile['rest_seconds']:.1f} s")
    if result["smoke"]:
        lines.append("SMOKE RUN: budgets cut, the numbers above check only that everything runs")
    lines += [f"note: {note}" for note in result["notes"]]
    m = result["machine"]
    lines.append(f"machine: {m.get('cpu_model', '?')}, {m['cpus']} CPUs; TF {result['versions']['tensorflow']}, "
                 f"keras {result['versions']['keras']}, ART {result['versions']['adversarial-robustness-toolbox']}, "
                 f"foolbox {result['versions']['foolbox']}; load average {result['load_avg']['before']} -> "
                 f"{result['load_avg']['after']}")
    lines.append(f"command: {result['command']}")
    return "\n".join(lines)


def markdown(result, text):
    s = result["settings"]
    return (f"### Attack speed: ours against ART and foolbox ({result['dataset']}, eps {result['eps']:.4g})\n\n"
            f"{result['n']} stratified test images (clean accuracy {100 * result['clean_accuracy']:.1f}%), batches "
            f"of {result['batch']}, APGD {s['apgd_steps']} iterations, PGD {s['pgd_steps']} steps of "
            f"{s['pgd_step_size']:.4g}, Square {s['square_queries']} queries, APGD-T {s['apgd_targets']} targets. "
            f"Seconds exclude a warm-up on {result['warmup_sizes'][0]} and {result['warmup_sizes'][1]} images; "
            f"ratio = theirs / ours.\n\n" + text.replace("\nnote:", "\n\nnote:") + "\n")


if __name__ == "__main__":
    sys.exit(main())
