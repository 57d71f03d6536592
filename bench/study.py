"""Rob-GAN against the baselines at equal training time: python bench/study.py --dataset mnist

First time every method's training steps, one after another (study_runs.probe_step_seconds).
Then for each method: size its epochs, and with them its eps warm-up and learning-rate schedule,
to the budget at its timed steps; train it (trainer.train,
resumable); evaluate it with the autoattack composition on the same test examples
(evaluation.evaluate, kept on disk); then write a table with Wilson 95% intervals and an exact
McNemar test of Rob-GAN against PGD-AT on the same examples, a bar chart, and the study's
section of BENCHMARKS.md. A method already trained or evaluated is not redone, so a study can
be completed over several sessions. It refuses to start while another training or test runs.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robgan_tf import data, evaluation, methods, quality, report, rundir, synthetic, trainer  # noqa: E402
from robgan_tf.config import AttackSettings, Config  # noqa: E402
from study_runs import BusyMachine, keep_cotrained, probe_step_seconds, start_from_cotrained, study_bars  # noqa: E402

# the literature's GAN settings for small data: a projection D (Miyato & Koyama 2018), DiffAugment (Zhao et al.
# 2020), the hinge loss of SN-GAN and BigGAN, and BigGAN's average of G's weights; the projection conditions the
# real/fake logit on the class, so AC-GAN's class term for G, which pulls G to one template a class, is cut to 0.1
DATA_EFFICIENT_GAN = {"projection": True, "diffaugment": "color,translation,cutout", "gan_loss": "hinge",
                      "g_ema_decay": 0.999, "g_class_weight": 0.1}
GAN_RUNS = ("robgan", "cgan", "robgan-de", "cgan-de")  # the study's GAN runs: Rob-GAN rows and plain cGANs
GENERATOR_SHARE = 0.5  # a "-half" GAN's share of the budget; its data rows' classifier gets the rest
HALF_GANS = tuple(f"{gan}-half" for gan in GAN_RUNS)  # generators for GAN-data rows at equal total time
GENERATORS = GAN_RUNS + HALF_GANS  # the study's GAN runs whose generators other variants use
VARIANTS = {  # name: settings over the dataset's defaults; "{robgan}" is the study's Rob-GAN run
    # every registered method at its defaults (cgan is trained for as long as robgan's co-training)
    **{name: {"method": name} for name in methods.METHODS},
    "robgan+gen": {"method": "robgan", "gen_ratio": 0.3},  # co-training shared with robgan
    "pgd-at+gen": {"method": "pgd-at", "gen_ratio": 0.3, "generator": "{robgan}/generator.keras"},
    # the same two with the data-efficient GAN settings of the literature (README, "a generator worth sampling from")
    "robgan-de": {"method": "robgan", **DATA_EFFICIENT_GAN},
    "cgan-de": {"method": "cgan", **DATA_EFFICIENT_GAN},  # trained for as long as robgan-de's co-training
    # a baseline on real images plus a set sampled once from a study GAN's generator ("{robgan}", "{cgan}", ...):
    # all its samples, or ("filter") those its GAN run's own classifier puts in their class (--filter-threshold)
    **{f"{base}+{gan}-{kind}data": {"method": base, "synthetic": "{" + gan + "}", **({"filter": True} if kind else {})}
       for base in ("pgd-at", "trades") for gan in GENERATORS for kind in ("", "filtered-")},
}
# each GAN again, trained on GENERATOR_SHARE of the budget (Rob-GAN's co-training only: fine-tuning makes no
# generator) so that its data rows fit the budget with their generator (equal total time, whatever --count-generator)
for gan in GAN_RUNS:
    VARIANTS[f"{gan}-half"] = {**VARIANTS[gan], "finetune_epochs": 0} if gan.startswith("robgan") else VARIANTS[gan]
# a plain cGAN: the Rob-GAN run whose co-training it matches
GAN_PARTNER = {"cgan": "robgan", "cgan-de": "robgan-de", "cgan-half": "robgan-half", "cgan-de-half": "robgan-de-half"}
# trained for their generator only (plain cGANs, every -half GAN): not evaluated, not in the table
CONTROLS = tuple(dict.fromkeys(tuple(GAN_PARTNER) + HALF_GANS))
FINETUNE_ONLY = ("gen_ratio", "lam", "finetune_lr")  # Rob-GAN settings its co-training does not use
BUSY = ("train.py", "pytest", "step_speed.py", "evaluate.py", "study.py")
PROBE_TRIES, PROBE_PAUSE = 3, 60  # a step probe another process disturbed is redone after a pause, this often


def other_runs():
    """Command lines of other processes training, testing or benchmarking on this machine."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(pid) not in mine and "python" in cmd and any(b in cmd for b in BUSY):
            found.append(f"{pid}: {cmd[:120]}")
    return found


BEAT_SECONDS = 30.0  # between load samples, and between saves of a training's or a sampling's time so far


class Heartbeat:
    """Every BEAT_SECONDS while a long step (training, sampling) runs: samples the 1-minute load
    average and hands the samples so far to `on_beat`, which saves the step's time so far (so a
    kill loses at most that long)."""

    def __init__(self, on_beat):
        self.samples, self._on_beat, self._stop = [], on_beat, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(BEAT_SECONDS):
            self.samples.append(os.getloadavg()[0])
            self._on_beat(self.samples)

    def __enter__(self):
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def stop(self):
        """Ends the beats; no `on_beat` call runs after it returns."""
        self._stop.set()
        self._thread.join()

    def __exit__(self, *exc):
        self.stop()


def steps_per_epoch(config, dataset):
    """A run's steps per epoch, (main stage, fine-tuning), as trainer.train makes them: its training
    images (--train-limit of what the validation split leaves, less what the method holds out) over
    the real images of a step (a stage that takes --synthetic images takes fewer real ones)."""
    method = methods.get(config.method)
    images = min(config.train_limit or len(dataset.y_train), len(dataset.y_train) - config.val_examples)
    images -= method.held_out(config)

    def real_images(stage):
        synthetic = round(config.synthetic_fraction * config.batch_size) if config.synthetic and stage.synthetic else 0
        return (config.batch_size - synthetic) * stage.batches_per_step(config)

    return images // real_images(method.stages[0]), images // real_images(method.stages[-1])


def sized_config(base, dataset, budget_seconds, step_seconds):
    """Epochs (and fine-tuning epochs, eps warm-up) that fit the training budget."""
    steps, finetune_steps = steps_per_epoch(base, dataset)
    if "finetune" in step_seconds:  # Rob-GAN: the defaults' split of time between the two stages, and
        # one fine-tuning epoch if they have any and it fits (it is where Rob-GAN mixes in its fakes)
        main = base.epochs * steps * step_seconds["cotrain"]
        ft = base.finetune_epochs * finetune_steps * step_seconds["finetune"]
        epochs = max(1, int(base.epochs * budget_seconds / (main + ft)))

        def finetune_epochs(epochs):
            left = budget_seconds - epochs * steps * step_seconds["cotrain"]
            return max(0, int(left / (finetune_steps * step_seconds["finetune"])))

        while base.finetune_epochs and epochs > 1 and finetune_epochs(epochs) == 0:
            epochs -= 1
        config = base.replace(epochs=epochs, finetune_epochs=finetune_epochs(epochs) if base.finetune_epochs else 0)
    else:
        (seconds,) = step_seconds.values()
        config = base.replace(epochs=max(1, int(budget_seconds / (steps * seconds))), finetune_epochs=0)
    return config.replace(eps_warmup_epochs=min(config.eps_warmup_epochs, config.epochs / 3))


def shares_cotraining(name):
    """Whether a Rob-GAN variant differs from robgan in fine-tuning only: its co-training would
    be robgan's, step for step, so it starts from robgan's end of co-training instead."""
    variant = VARIANTS[name]
    return name != "robgan" and variant["method"] == "robgan" and set(variant) - {"method"} <= set(FINETUNE_ONLY)


def shared_config(base, robgan, dataset, budget_seconds, cotrain_seconds, step_seconds):
    """A co-training-sharing variant's settings: robgan's, with its own fine-tuning settings and
    as many fine-tuning epochs (at least one) as fit in the budget left after robgan's co-training."""
    config = robgan.replace(**{k: getattr(base, k) for k in FINETUNE_ONLY})
    seconds = steps_per_epoch(config, dataset)[1] * step_seconds["finetune"]
    return config.replace(finetune_epochs=max(1, int((budget_seconds - cotrain_seconds) / seconds)))


def probe_when_quiet(config, dataset, stages, **probe):
    """probe_step_seconds, timed again after a pause while other processes use the CPU (a step timed
    then would be slow, and its budget sized short); None if they do not stop within PROBE_TRIES."""
    for _ in range(PROBE_TRIES):
        try:
            return probe_step_seconds(config, dataset, stages, **probe)
        except BusyMachine as e:
            print(f"== {e}: timing again in {PROBE_PAUSE} s", flush=True)
            time.sleep(PROBE_PAUSE)
    return None


def probe_rows(names, state, out, dataset_name, dataset, overrides, seed, save_state, first=True):
    """Times the training step of every row not yet timed, one after another. The study calls it
    `first`, before any row trains, so that all rows are sized at the same machine speed (this
    machine's speed drifted by up to a third between sessions: a row timed hours after another
    would get its steps at another rate). A row whose step draws from a study GAN's frozen generator
    (pgd-at+gen) waits then, and is timed (first=False) when its turn comes and the generator
    exists. Returns a problem, or None."""
    for name in names:
        entry = state["methods"].setdefault(name, {})
        variant = variant_settings(name, out)
        variant.pop("filter", None)  # not a training setting; a data row's step is timed on real images
        base = base_config(dataset_name, variant, overrides, seed)
        frozen_generator = base.gen_ratio and not methods.get(base.method).trains_generator
        if "step_seconds" in entry or "config" in entry or (first and frozen_generator):
            continue
        print(f"== {name}: timing its training step ...")
        entry["step_seconds"] = probe_when_quiet(base, dataset, ("finetune",) if shares_cotraining(name) else None)
        if entry["step_seconds"] is None:
            del entry["step_seconds"]
            return (f"{name}: other processes kept using the CPU through {PROBE_TRIES} step probes; "
                    f"stop them and rerun")
        save_state()
    return None


def cotrain_seconds(entry, run_dir):
    """The training time of a finished Rob-GAN run that went to co-training: all of it but its
    fine-tuning epochs' (so the per-epoch and final evaluations count as co-training)."""
    finetune = sum(float(r["seconds"]) for r in rundir.read_metrics_rows(run_dir) if r["stage"] == "finetune")
    return round(entry["train_seconds"] - finetune, 1)


def _setting(item):
    """KEY=VALUE with VALUE read as JSON when it is (numbers, true, null), else as a string."""
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _unpaired(out, methods, settings, n_examples):
    """Why a method's kept evaluation cannot be paired with new ones (other examples or
    attacks), or None."""
    for name in methods:
        path = os.path.join(out, name, "study_evaluation", report.REPORT_JSON)
        if os.path.exists(path):
            with open(path) as f:
                kept = json.load(f)
            if kept["settings"] != dataclasses.asdict(settings) or kept["n_examples"] != n_examples:
                return (f"{name} was evaluated on {kept['n_examples']} examples with {kept['settings']}; rerun "
                        f"with those settings, or delete {os.path.dirname(path)} to evaluate it again")
    return None


def needs(name):
    """The study GAN runs a variant builds on (their generator, or robgan's co-training)."""
    variant = VARIANTS[name]
    wanted = _named_gans(variant.get("generator")) | _named_gans(variant.get("synthetic"))
    return wanted | ({"robgan"} if shares_cotraining(name) else set()) | (
        {GAN_PARTNER[name]} if name in GAN_PARTNER else set())


def _named_gans(setting):
    """The study GAN runs a variant's setting names ("{robgan}/generator.keras", "{cgan}")."""
    return {gan for gan in GENERATORS if "{" + gan + "}" in str(setting)}


def gans_of(names):
    """The study GAN runs whose generators the variants `names` use: their own (a GAN run's) or one they
    build on (a sampled set, fakes drawn in training, or a shared co-training)."""
    return {gan for name in names for gan in ({name} if name in GENERATORS else needs(name))}


def counts_generator(name, count_generator):
    """Whether a GAN-data variant's budget includes its generator's training and sampling: with
    --count-generator, or always for a "-half" GAN's, which is sized for that."""
    return count_generator or data_source(name) in HALF_GANS


def _other_counting(methods, state, count_generator):
    """Why a GAN-data variant sized with the other --count-generator would be resumed, or None."""
    for name in methods:
        kept = state["methods"].get(name, {}).get("count_generator")
        if kept is not None and kept != counts_generator(name, count_generator):
            flag = "--count-generator" if kept else "--no-count-generator"
            return (f"{name} was sized with {flag}; rerun with it, or remove its entry from study.json and its folder "
                    f"to size it again")
    return None


def _generator_first(methods, state):
    """Why a variant that builds on a study GAN run would come before that run is trained, or None."""
    for i, name in enumerate(methods):
        for gan in sorted(needs(name)):
            if gan not in methods[:i] and not state["methods"].get(gan, {}).get("trained"):
                return f"{name} builds on the study's {gan} run: list {gan} before it"
    return None


def variant_settings(name, out):
    """A variant's settings, with the study GAN runs it names ("{robgan}", "{cgan}") as their folders."""
    folders = {gan: os.path.join(out, gan) for gan in GENERATORS}
    return {k: v.format(**folders) if isinstance(v, str) else v for k, v in VARIANTS[name].items()}


def data_source(name):
    """The study GAN run whose sampled set a variant trains on, or None."""
    (gan,) = _named_gans(VARIANTS[name].get("synthetic")) or (None,)
    return gan


def filtered(name):
    """Whether a GAN-data variant keeps only the samples its GAN run's classifier puts in their class."""
    return VARIANTS[name].get("filter", False)


def _other_threshold(methods, state, threshold):
    """Why a filtered set made at another --filter-threshold would be reused, or None."""
    kept = state.get("filter_threshold")
    if kept is not None and kept != threshold and any(filtered(name) for name in methods):
        return (f"the study's filtered sets were made with --filter-threshold {kept:g}; rerun with it, or, to filter "
                f"again, delete the sets (*-filtered-data.*) and the rows trained on them (their folders, and their "
                f"entries in study.json's methods), and study.json's filter_threshold and *-filtered_sampling_* keys")
    return None


def no_time_left(name, gan, entry, budget_seconds, base, dataset):
    """Why a GAN-data variant's classifier would get less than one epoch of the budget left after
    its generator's (sized) training and sampling, or None."""
    (step,) = entry["step_seconds"].values()
    if budget_seconds >= steps_per_epoch(base, dataset)[0] * step:
        return None
    spent = (entry["generator_charged_seconds"] + entry["sampling_seconds"]) / 60
    remedy = ("lower --synthetic-n" if gan in HALF_GANS else "pass --no-count-generator to give it the whole "
              "budget (its row then shows the generator's minutes on top)")
    return (f"{name}: {gan}'s generator (its sized training) and sampling it are charged {spent:.1f} minutes, "
            f"which leaves its classifier less than one epoch of the budget; raise --budget-minutes, or {remedy}")


def generator_seconds(name, state, out):
    """The time it took to train a study GAN's generator: a Rob-GAN run's co-training, or all of a cGAN's."""
    entry = state["methods"][name]
    return (cotrain_seconds(entry, os.path.join(out, name)) if VARIANTS[name]["method"] == "robgan"
            else entry["train_seconds"])


def cotrain_budget(entry, dataset):
    """The seconds a GAN run's co-training was sized to: its epochs x steps x its timed step. It is
    the budget a plain GAN gets from its Rob-GAN partner, and what a GAN-data row counting its
    generator pays for it: every row pays for its sized training steps, none for the per-epoch
    validation and scoring that measure a run (those are in the table's wall-clock minutes)."""
    config = Config(**entry["config"])
    return config.epochs * steps_per_epoch(config, dataset)[0] * entry["step_seconds"]["cotrain"]


def sample_set(gan, state, out, n, seed, save_state, threshold=None):
    """The study's set of n samples of a GAN run's generator: its path, its sampling seconds and,
    filtered, the share of the drawn samples it kept (made once, timed, resumable: an interrupted sampling
    keeps its chunks and its seconds so far, saved with `save_state`). With a threshold, drawn
    until n are kept of the samples whose class is the top class of the GAN run's own classifier
    (trained on the same real images: no other data leaks in), with at least that confidence."""
    name = gan if threshold is None else f"{gan}-filtered"
    path = os.path.join(out, f"{name}-data.npz")
    key, so_far = f"{name}_sampling_seconds", f"{name}_sampling_seconds_so_far"
    if key not in state:
        import keras

        run = os.path.join(out, gan)
        judge = None if threshold is None else os.path.join(run, rundir.CLASSIFIER)
        print(f"== sampling {n} images from {gan}'s generator" + (f", kept where {judge}'s top class is theirs "
                                                                f"(confidence >= {threshold:g}) ..." if judge else " ..."))
        if judge:  # recorded before any chunk is drawn, so that a resume at another threshold is refused
            state["filter_threshold"] = threshold
            save_state()
        started, before, source = time.time(), state.get(so_far, 0), os.path.join(run, rundir.GENERATOR)

        def record(_=None):  # the seconds so far, saved: an interrupted or killed sampling resumes with them
            state[so_far] = round(before + time.time() - started, 1)
            save_state()

        with Heartbeat(record) as beats:
            try:
                synthetic.write(keras.saving.load_model(source), n, path, seed, threshold=threshold or 0.0,
                                keep=keras.saving.load_model(judge) if judge else None,
                                describe={"generator": source, "filter": judge})
            finally:  # finished or not, its time so far is kept
                beats.stop()
                record()
        state[key] = state.pop(so_far)
        save_state()
    if threshold is None:
        return path, state[key], None
    with open(synthetic.metadata_path(path)) as f:
        return path, state[key], json.load(f)["kept_fraction"]


SIZED = ("epochs", "finetune_epochs", "eps_warmup_epochs")  # the settings a study sizes to its budget


def base_config(dataset_name, variant, overrides, seed):
    """A study row's settings before sizing: the dataset's defaults, --set, then the variant's own."""
    variant = dict(variant)
    return methods.config_for(dataset_name, variant.pop("method"),
                              {**overrides, "seed": seed, "eval_examples": 1000, **variant})


def _wanted_gans(names, state):
    """The study GAN runs the variants `names` build on that the study lacks, each with the sampled sets
    ("<gan>" or "<gan>-filtered") its rows train on."""
    wanted = {}
    for name in names:
        for gan in gans_of([name]) - set(state["methods"]):
            sets = wanted.setdefault(gan, set())
            if data_source(name) == gan:
                sets.add(f"{gan}-filtered" if filtered(name) else gan)
    return wanted


def adoption(source, names, state, dataset, overrides, args):
    """(why not, or None; the plan) for --generators-from: which of the GAN runs the variants `names` build
    on the study folder `source` holds trained, each with its state entry and scores, and the sampled sets
    the rows use with their sampling seconds. Each run must have been trained on this study's data, with its
    settings (all but those sized to a budget), so none of its images are this study's validation images;
    its sets must have been drawn as this study would draw them. A run it does not hold is trained here."""
    wanted = _wanted_gans(names, state)
    path = os.path.join(source, "study.json")
    if not wanted:
        return None, {}
    if not os.path.exists(path):
        return f"--generators-from {source}: no study.json there", {}
    with open(path) as f:
        theirs = json.load(f)
    plan = {}
    for gan, sets in sorted(wanted.items()):
        entry, run = theirs["methods"].get(gan, {}), os.path.join(source, gan)
        if not entry.get("trained"):
            continue
        where = f"--generators-from {source}: its {gan}"
        if not os.path.exists(os.path.join(run, rundir.CONFIG)):
            return f"{where} is in its study.json but its folder {run} is not there", {}
        with open(os.path.join(run, rundir.CONFIG)) as f:
            if json.load(f).get("data") != dataset.identity():
                return f"{where} was trained on other data than this study's {dataset.name}", {}
        ours = json.loads(json.dumps(base_config(args.dataset, VARIANTS[gan], overrides, args.seed).as_dict()))
        differ = sorted(k for k in ours.keys() & entry["config"].keys() if k not in SIZED
                        and ours[k] != entry["config"][k])
        if differ:
            return (f"{where} was trained with other settings: " + ", ".join(
                f"{k}={entry['config'][k]} (here {ours[k]})" for k in differ)), {}
        plan[gan] = {"entry": entry, "scores": theirs.get("generator_scores", {}).get(gan), "sets": {}}
        for name in sorted(sets & {key[:-len("_sampling_seconds")] for key in theirs}):
            data_set = os.path.join(source, f"{name}-data.npz")
            if not all(map(os.path.exists, (data_set, synthetic.metadata_path(data_set)))):
                return f"{where}'s set {data_set} or its metadata is not there", {}
            with open(synthetic.metadata_path(data_set)) as f:
                drawn = json.load(f)
            if drawn["n"] != args.synthetic_n or drawn["seed"] != args.seed:
                return f"{where}'s set {name}-data.npz holds {drawn['n']} samples of seed {drawn['seed']}", {}
            if name != gan and theirs["filter_threshold"] != args.filter_threshold:
                return (f"{where}'s set {name}-data.npz was filtered at --filter-threshold "
                        f"{theirs['filter_threshold']:g}; pass that"), {}
            plan[gan]["sets"][name] = theirs[f"{name}_sampling_seconds"]
            plan[gan]["filter_threshold"] = theirs.get("filter_threshold")
    return None, plan


def _copy_whole(source, target, copy):
    """`copy` (shutil.copy2 or copytree) of `source` to `target` through a temporary name, so that a
    kill leaves no partial target; a target already there (a copy whose state a kill lost) is replaced."""
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    copy(source, partial)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.replace(partial, target)


def adopt_generators(source, out, plan, state, save_state):
    """Takes the GAN runs of `plan` (from adoption) from the study folder `source` as they are: the run,
    the sampled sets and their sampling seconds, and its scores, so that studies at other budgets compare
    classifiers on the same generators, each charged its own sized training time."""
    for gan, taken in plan.items():
        _copy_whole(os.path.join(source, gan), os.path.join(out, gan), shutil.copytree)
        for name, seconds in taken["sets"].items():
            for file in (f"{name}-data.npz", synthetic.metadata_path(f"{name}-data.npz")):
                _copy_whole(os.path.join(source, file), os.path.join(out, file), shutil.copy2)
            state[f"{name}_sampling_seconds"] = seconds
            if name != gan:
                state["filter_threshold"] = taken["filter_threshold"]
        if taken["scores"] is not None:
            state.setdefault("generator_scores", {})[gan] = taken["scores"]
        state["methods"][gan] = {**taken["entry"],
                                 "adopted_from": taken["entry"].get("adopted_from", os.path.abspath(source))}
        save_state()  # after its files: a kill before it copies them again


def generator_scores(gan, state, out, dataset):
    """A study GAN run's final generator scored as a data source (quality.GeneratorQuality: GAN-test,
    GAN-train against the same CNN trained on the run's real training images, diversity, Frechet
    distance), with the run's reference CNN; computed once and kept in the study state."""
    scores = state.setdefault("generator_scores", {})
    if gan not in scores:
        import keras

        print(f"== scoring {gan}'s generator as a data source ...")
        run, config = os.path.join(out, gan), Config(**state["methods"][gan]["config"])
        _, train_images = data.run_split(dataset, config.val_examples, config.train_limit, config.seed)
        scorer = quality.GeneratorQuality(dataset, trainer.reference_classifier(dataset, run, config.seed),
                                          seed=config.seed, train_images=train_images)
        scores[gan] = scorer(keras.saving.load_model(os.path.join(run, rundir.GENERATOR)))
    return scores[gan]


def mcnemar_p(a, b):
    """Exact two-sided McNemar p-value for paired booleans a, b (e.g. robust per example)."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--methods", nargs="+", default=["robgan", "pgd-at", "fgsm-rs", "trades"], choices=VARIANTS)
    p.add_argument("--budget-minutes", type=float, default=45.0, help="training wall-clock per method")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="settings for every method over the dataset defaults, e.g. width=32 g_width=64")
    p.add_argument("--eval-examples", type=int, default=1000, help="stratified test examples, the same for all")
    p.add_argument("--square-queries", type=int, default=5000, help="Square's query budget in the evaluation")
    p.add_argument("--apgd-targets", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-n", type=int, default=20000, help="images sampled once from a study GAN's "
                                                                  "generator for the +<gan>-data variants")
    p.add_argument("--filter-threshold", type=float, default=0.0,
                   help="a -filtered-data set keeps the samples whose class is its GAN run's classifier's top class, "
                        "with at least this confidence")
    p.add_argument("--count-generator", action=argparse.BooleanOptionalAction, default=True,
                   help="count a GAN-data variant's generator training and sampling in its budget (equal total "
                        "time); --no-count-generator gives its classifier the whole budget (equal classifier "
                        "time), the generator's minutes shown beside")
    p.add_argument("--generators-from", metavar="STUDY_FOLDER",
                   help="take the GAN runs the methods build on (and their sampled sets) from another study "
                        "folder of the same data instead of training them: the same generators at another budget")
    p.add_argument("--out", help="study folder (default: checkpoints/study-<dataset>)")
    p.add_argument("--benchmarks", default="BENCHMARKS.md", help="Markdown file whose study section is rewritten")
    p.add_argument("--json", help="the table's rows, with each row's autoattack result per test example, for the "
                                  "repository: a study folder does not outlive its machine (default: bench/results/"
                                  "study-<dataset>[-<train_limit>][-<budget>].json beside --benchmarks)")
    p.add_argument("--force", action="store_true", help="start even if other training or test runs are seen")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if not 0 <= args.filter_threshold < 1:
        print(f"error: --filter-threshold {args.filter_threshold:g}: it must be in [0, 1)", file=sys.stderr)
        return 1
    busy = other_runs()
    if busy and not args.force:
        print("error: other training or test runs are going; equal-time budgets would not be fair:\n  "
              + "\n  ".join(busy), file=sys.stderr)
        return 1
    out = args.out or os.path.join("checkpoints", f"study-{args.dataset}")
    os.makedirs(out, exist_ok=True)
    state_path = os.path.join(out, "study.json")
    state = {"methods": {}}
    if os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
    settings = AttackSettings(square_queries=args.square_queries, apgd_targets=args.apgd_targets,
                                         seed=args.seed)
    overrides = dict(_setting(item) for item in args.set)
    problem = (_unpaired(out, args.methods, settings, args.eval_examples)
               or _other_counting(args.methods, state, args.count_generator)
               or _other_threshold(args.methods, state, args.filter_threshold))
    dataset, plan = None, {}
    if not problem and args.generators_from:  # the runs it takes count as trained below
        dataset = data.load(args.dataset, args.data_dir)
        problem, plan = adoption(args.generators_from, args.methods, state, dataset, overrides, args)
    problem = problem or _generator_first(args.methods, {"methods": {**state["methods"], **{
        gan: {"trained": True} for gan in plan}}})
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    dataset = dataset or data.load(args.dataset, args.data_dir)
    x_eval, y_eval = data.subset(dataset.x_test, dataset.y_test, args.eval_examples, args.seed)

    def save_state():
        with open(state_path + ".tmp", "w") as f:
            json.dump(state, f, indent=2)
        os.replace(state_path + ".tmp", state_path)

    adopt_generators(args.generators_from, out, plan, state, save_state)
    problem = probe_rows(args.methods, state, out, args.dataset, dataset, overrides, args.seed, save_state)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1

    for name in args.methods:
        entry = state["methods"].setdefault(name, {})
        run_dir = os.path.join(out, name)
        variant = variant_settings(name, out)
        gan = data_source(name)
        budget = 60 * args.budget_minutes
        if gan:  # the generator's training and the sampling count in the budget (unless --no-count-generator)
            variant.pop("filter", None)  # not a training setting: filtered(name) answers it
            try:
                variant["synthetic"], entry["sampling_seconds"], kept = sample_set(
                    gan, state, out, args.synthetic_n, args.seed, save_state,
                    args.filter_threshold if filtered(name) else None)
            except synthetic.SampleError as e:  # a filter that keeps too little: its chunks and time are kept
                print(f"error: {name}: {e}", file=sys.stderr)
                return 1
            if filtered(name):
                entry["kept_fraction"] = kept
            entry["generator_seconds"] = generator_seconds(gan, state, out)
            entry["generator_charged_seconds"] = round(cotrain_budget(state["methods"][gan], dataset), 1)
            if counts_generator(name, args.count_generator):  # its generator's sized time, as any row's steps
                budget -= entry["generator_charged_seconds"] + entry["sampling_seconds"]
        elif name in GAN_PARTNER:  # a generator trained for as long as its Rob-GAN's co-training was sized to take
            budget = cotrain_budget(state["methods"][GAN_PARTNER[name]], dataset)
        elif name in HALF_GANS:  # a generator for rows at equal total time
            budget *= GENERATOR_SHARE
        base = base_config(args.dataset, variant, overrides, args.seed)
        shared = shares_cotraining(name)
        if "config" not in entry:
            problem = probe_rows([name], state, out, args.dataset, dataset, overrides, args.seed, save_state,
                                 first=False)  # a row left untimed (pgd-at+gen): its generator exists now
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                return 1
            if shared:  # robgan's co-training time counts as this variant's
                robgan = state["methods"]["robgan"]
                entry["train_seconds"] = cotrain_seconds(robgan, os.path.join(out, "robgan"))
                config = shared_config(base, Config(**robgan["config"]), dataset, 60 * args.budget_minutes,
                                       entry["train_seconds"], entry["step_seconds"])
                entry["cotraining"] = "robgan"
            else:
                counted = gan and counts_generator(name, args.count_generator)
                problem = no_time_left(name, gan, entry, budget, base, dataset) if counted else None
                if problem:
                    save_state()  # the sampling is done and kept
                    print(f"error: {problem}", file=sys.stderr)
                    return 1
                if gan:
                    entry["count_generator"] = counted
                config = sized_config(base, dataset, budget, entry["step_seconds"])
            entry["config"] = config.as_dict()
            entry["budget_minutes"] = args.budget_minutes
            save_state()
        config = Config(**entry["config"])
        if shared and not os.path.exists(os.path.join(run_dir, rundir.CONFIG)):
            start_from_cotrained(os.path.join(out, "robgan"), run_dir, methods.get("robgan").metric_columns())
        if not entry.get("trained"):
            print(f"== {name}: {config.epochs} epochs + {config.finetune_epochs} fine-tuning epochs "
                  f"in a {args.budget_minutes:g}-minute budget (step {entry['step_seconds']})")
            started = time.time()
            seconds_before, samples_before = entry.get("train_seconds", 0), entry.get("load_samples", [])

            def record(samples):  # the time and load so far, saved: an interrupted or killed run resumes with them
                entry["train_seconds"] = round(seconds_before + time.time() - started, 1)
                entry["load_samples"] = samples_before + [round(s, 2) for s in samples]
                entry["load_average"] = {"mean": round(sum(entry["load_samples"]) / len(entry["load_samples"]), 2),
                                         "max": max(entry["load_samples"])}
                save_state()

            with Heartbeat(record) as load:
                try:
                    trainer.train(config, dataset, run_dir,
                                  after_stage=keep_cotrained(run_dir))
                    entry["trained"] = True
                finally:
                    load.stop()
                    record(load.samples)
        eval_dir = os.path.join(run_dir, "study_evaluation")
        if name not in CONTROLS and not os.path.exists(os.path.join(eval_dir, report.REPORT_JSON)):
            print(f"== {name}: autoattack on {len(y_eval)} test examples")
            result = evaluation.evaluate(evaluation.load_classifier(run_dir), x_eval, y_eval, [config.eps],
                                         evaluation.attack_named("autoattack", settings), settings)
            summary = report.build(result, model=run_dir, dataset=args.dataset, seed=args.seed, attack="autoattack",
                                   eps=[config.eps], settings=dataclasses.asdict(settings))
            report.write(summary, result, eval_dir)
    for gan in sorted(g for g in gans_of(args.methods) if state["methods"].get(g, {}).get("trained")):
        generator_scores(gan, state, out, dataset)
        save_state()
    rows = table_rows(state, out, args, dataset)
    if not rows:  # only generators (controls) so far
        print("no evaluated row yet: the table waits for one")
        return 0
    write_outputs(rows, state, out, args)
    return 0


def table_rows(state, out, args, dataset):
    rows = []
    for name in args.methods:
        entry = state["methods"].get(name, {})
        eval_dir = os.path.join(out, name, "study_evaluation")
        if not os.path.exists(os.path.join(eval_dir, report.REPORT_JSON)):
            continue
        with open(os.path.join(eval_dir, report.REPORT_JSON)) as f:
            rep = json.load(f)
        metrics = rundir.read_metrics_json(os.path.join(out, name))
        (gan,) = gans_of([name]) or (None,)
        scores = state.get("generator_scores", {}).get(gan, {})
        eps = evaluation.eps_key(entry["config"]["eps"])
        reached = _epochs_reached(os.path.join(out, name), entry["config"])
        config = Config(**entry["config"])
        steps, finetune_steps = steps_per_epoch(config, dataset)  # the classifier's updates: D's, then fine-tuning's
        classifier_steps = reached["epochs"] * steps * config.n_dis + reached["finetune_epochs"] * finetune_steps
        rows.append({"method": name, **reached, "classifier_steps": classifier_steps,
                     "train_minutes": round(entry["train_seconds"] / 60, 1), "load_average": entry["load_average"],
                     "clean": rep["clean_accuracy"], "clean_ci95": rep["clean_accuracy_ci95"],
                     "pgd20": rep["robust_accuracy"]["pgd-20"][eps],
                     "pgd20_ci95": rep["robust_accuracy_ci95"]["pgd-20"][eps],
                     "autoattack": rep["robust_accuracy"]["autoattack"][eps],
                     "autoattack_ci95": rep["robust_accuracy_ci95"]["autoattack"][eps],
                     "gan_test": scores.get("gan_test_accuracy"), "gan_train": scores.get("gan_train_accuracy"),
                     "early_stop": metrics.get("early_stop"),
                     "generator_minutes": round((entry.get("generator_seconds", 0) + entry.get(
                         "sampling_seconds", 0)) / 60, 1), "best_epoch": (metrics.get("best_epoch") or {}).get("epoch"),
                     "masking": rep["possible_gradient_masking"], "cotraining": entry.get("cotraining"),
                     "kept_fraction": entry.get("kept_fraction")})
    return rows


def _epochs_reached(run_dir, config):
    """Epochs trained (an early stop ends short of the plan) and fine-tuning epochs, from metrics.csv."""
    rows = rundir.read_metrics_rows(run_dir)
    return {"epochs": len({r["epoch"] for r in rows if r["stage"] != "finetune"}),
            "finetune_epochs": len({r["epoch"] for r in rows if r["stage"] == "finetune"}),
            "planned_epochs": config["epochs"]}


def command(args):
    """The study.py command line that reproduces this study."""
    parts = ["python bench/study.py", f"--dataset {args.dataset}", "--methods " + " ".join(args.methods),
             f"--budget-minutes {args.budget_minutes:g}", f"--square-queries {args.square_queries}"]
    p = parser()
    optional = ("eval_examples", "apgd_targets", "seed", "filter_threshold")
    parts += [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in optional if getattr(args, k) != p.get_default(k)]
    parts += [] if args.count_generator else ["--no-count-generator"]
    parts += [f"--generators-from {args.generators_from}"] if args.generators_from else []
    if args.set:
        parts.append("--set " + " ".join(args.set))
    return " ".join(parts)


def section_name(args):
    """The study's name in BENCHMARKS.md and bench/results: the dataset, then the training-set size when
    limited, and the budget when the size is limited or the budget is not the default, so that one
    dataset's studies at other sizes or budgets do not overwrite each other."""
    limit = dict(_setting(item) for item in args.set).get("train_limit")
    default_budget = args.budget_minutes == parser().get_default("budget_minutes")
    return "-".join([args.dataset] + ([str(limit)] if limit else [])
                    + ([] if default_budget and not limit else [f"{args.budget_minutes:g}"]))


def _frechet(metrics):
    """The Frechet distance clause of a generator's line; runs scored before it have pixel-L2
    diversities and no Frechet distance, and say so."""
    if "frechet_distance" not in metrics:
        return " (pixel L2: a run scored before feature-space diversity)"
    return (f" (reference-CNN features), Frechet distance {metrics['frechet_distance']:.2f} to real test images "
            f"(the same features; not an Inception FID)")


def generator_lines(state, out, args):
    """A line per study GAN: its training time and its generator's scores as a data source."""
    lines = []
    for gan, m in state.get("generator_scores", {}).items():
        if gan not in gans_of(args.methods):
            continue
        source = state["methods"][gan].get("adopted_from")
        lines.append(f"- {gan}'s generator ({round(generator_seconds(gan, state, out) / 60, 1)} training minutes"
                     + (f", trained in the study at {source} and taken from it" if source else "") + "): "
                     f"GAN-test {100 * m['gan_test_accuracy']:.1f}% (reference CNN on real images: "
                     f"{100 * m['gan_test_reference_accuracy']:.1f}%), GAN-train {100 * m['gan_train_accuracy']:.1f}% "
                     f"({m['gan_train_accuracy'] / m['gan_train_real_accuracy']:.0%} of the same CNN trained on the "
                     f"real training images: {100 * m['gan_train_real_accuracy']:.1f}%), "
                     f"diversity {m['sample_diversity']:.2f} of real{_frechet(m)}.")
    return ["", *lines] if lines else []


def write_outputs(rows, state, out, args):
    import numpy as np

    paired = {}
    flags = {r["method"]: np.load(os.path.join(out, r["method"], "study_evaluation", report.ROBUST_EXAMPLES))
             for r in rows}
    for r in rows:
        key = next(k for k in flags[r["method"]].files if k.startswith("autoattack@"))
        r["_robust"] = flags[r["method"]][key]
    by_name = {r["method"]: r for r in rows}
    if "pgd-at" in by_name:
        for name in (n for n in by_name if VARIANTS[n]["method"] == "robgan"):
            paired[f"{name}_vs_pgd-at_mcnemar_p"] = mcnemar_p(by_name[name]["_robust"], by_name["pgd-at"]["_robust"])
    gan_rows = [r for r in rows if gans_of([r["method"]])]
    real_rows = [r for r in rows if r not in gan_rows]
    if gan_rows and real_rows:  # the best row that uses a GAN against the best that does not
        best_gan, best_real = (max(group, key=lambda r: r["autoattack"]) for group in (gan_rows, real_rows))
        paired[f"{best_gan['method']}_vs_{best_real['method']}_mcnemar_p"] = mcnemar_p(best_gan["_robust"],
                                                                                       best_real["_robust"])
    pct = lambda v, ci: f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"  # noqa: E731
    name = section_name(args)
    lines = [f"<!-- study:{name} -->",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}. "
             f"Budget {args.budget_minutes:g} training minutes per method, "
             + ("a generator's training and sampling included (G + sampling); " if args.count_generator else
                "a GAN-data row's classifier included, its generator's training and sampling (G + sampling) "
                "on top: equal classifier time, not equal total time (except for a \"-half\" GAN's rows, whose "
                f"generator was trained on {GENERATOR_SHARE:.0%} of the budget and is counted in it); ") +
             "a counted generator pays its sized training time, as every row pays its sized steps (the minutes "
             "shown are wall clock, with each run's per-epoch validation and scoring); " +
             f"classifier steps are the robust classifier's optimizer updates (D's in co-training, then "
             f"fine-tuning's), for a comparison at equal steps. "
             f"Command: `{command(args)}`. "
             f"Evaluation: autoattack (APGD-CE, APGD-T, Square) at eps = "
             f"{state['methods'][rows[0]['method']]['config']['eps']:.4g} on {args.eval_examples} stratified test "
             f"examples, the same for every method; [Wilson 95% intervals].", "",
             "| method | epochs (+FT) | classifier steps | best epoch | G + sampling min | train min | total min | "
             "load avg | clean % | PGD-20 % | autoattack % | GAN-test % | GAN-train % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gan = f"{100 * r['gan_test']:.1f}" if r["gan_test"] is not None else "–"
        gan_train = f"{100 * r['gan_train']:.1f}" if r.get("gan_train") is not None else "–"
        note = " (early stop)" if r["early_stop"] else ""
        note += f" (co-training: {r['cotraining']}'s)" if r.get("cotraining") else ""
        note += f" (kept {r['kept_fraction']:.0%} of the samples)" if r.get("kept_fraction") else ""
        epochs = f"{r['epochs']}" + (f" of {r['planned_epochs']}" if r["epochs"] < r["planned_epochs"] else "")
        total = round(r["train_minutes"] + r["generator_minutes"], 1)
        lines.append(f"| {r['method']}{note} | {epochs} (+{r['finetune_epochs']}) | {r['classifier_steps']} | "
                     f"{r['best_epoch'] or '–'} | "
                     f"{r['generator_minutes'] or '–'} | {r['train_minutes']} | {total} | "
                     f"{r['load_average']['mean']} | {pct(r['clean'], r['clean_ci95'])} | "
                     f"{pct(r['pgd20'], r['pgd20_ci95'])} | "
                     f"{pct(r['autoattack'], r['autoattack_ci95'])} | {gan} | {gan_train} |")
    if paired:
        tests = ", ".join(f"{k.replace('_mcnemar_p', '').replace('_vs_', ' vs ')}: p = {p:.3g}"
                          for k, p in paired.items())
        lines += ["", f"Exact McNemar tests under autoattack on the same examples: {tests}."]
    lines += generator_lines(state, out, args)
    if any(r.get("cotraining") for r in rows):
        lines += ["", "A variant with a co-training owner differs from it in fine-tuning only: it starts from "
                      "that run's end of co-training, counts that run's training time up to there as its own, "
                      "and its load average covers its fine-tuning."]
    lines.append(f"<!-- /study:{name} -->")
    section = "\n".join(lines)
    for r in rows:  # kept as 0/1 text, so that a paired test can be redone from the summary alone
        r["autoattack_robust_examples"] = "".join("1" if robust else "0" for robust in r.pop("_robust"))
    summary = {"rows": rows, "paired": paired, "state": state}
    kept = args.json or os.path.join(os.path.dirname(args.benchmarks), "bench", "results", f"study-{name}.json")
    for path in (os.path.join(out, "summary.json"), kept):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(section + "\n")
    study_bars(rows, os.path.join(out, "study.png"), title=f"{name}: {args.budget_minutes:g} min each")
    if os.path.exists(args.benchmarks):
        text = open(args.benchmarks).read()
        start, end = f"<!-- study:{name} -->", f"<!-- /study:{name} -->"
        if start in text and end in text:
            text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + f"\n\n## Study: {name}\n\n" + section + "\n"
        with open(args.benchmarks, "w") as f:
            f.write(text)
    print(section)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # `kill` saves the study state
    sys.exit(main())
