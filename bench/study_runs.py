"""What only the benchmarks need from a run: timing a method's training steps, keeping Rob-GAN's
end of co-training for variants that share it, and the study's bar chart."""

import os
import shutil
import tempfile
import textwrap
import time

import keras
import numpy as np
import tensorflow as tf

from robgan_tf import data, distribute, methods, recipes, rundir, trainer
from robgan_tf.plots import plt  # matplotlib with the Agg backend

COTRAINED = "cotrained"  # in a study's Rob-GAN run: its checkpoint at the end of co-training
OTHERS_LIMIT = 0.2  # CPU cores other processes may use while a step is timed before the timing is refused


class BusyMachine(RuntimeError):
    """Other processes used the CPU while a training step was timed, so the timing is slow and unfair."""


def busy_cpu_seconds():
    """CPU seconds every process has spent busy since boot, summed over cores (/proc/stat: user, nice,
    system, irq, softirq and steal time), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def probe_step_seconds(config, dataset, stages=None, steps=50, warmup=3, verbose="auto", weights_from=None):
    """Seconds per training step of each stage of `config`'s method ({stage name: s}), or of the
    given `stages` only, as `fit` runs them in training: on the real input pipeline, with the
    progress bar and the stage's own callbacks (an overfitting guard checks before
    the first step and at epoch ends, outside the timed window: once an epoch, its cost is a
    rounding error). The mean of `steps` steps after `warmup`. (Timing the
    bare step on one in-memory batch missed that loop's own cost: FGSM-RS on MNIST probed 56 ms
    and trained at 69-77 ms.) Raises BusyMachine if other processes used more than OTHERS_LIMIT
    cores on average over a stage's timed steps (the machine's busy time less this process's).
    With `weights_from` (a run directory of the same settings) the steps start from its trained
    weights (load_trained_weights) instead of fresh ones."""
    method = methods.get(config.method)
    with distribute.dtype_policy(config.mixed_precision):
        parts = trainer.build_parts(config, dataset, method)
        if weights_from:
            load_trained_weights(parts, weights_from)
        optimizers = method.optimizers(config, parts, {stage.name: 1000 for stage in method.stages})
    seconds = {}
    for stage in method.stages:
        if stages is not None and stage.name not in stages:
            continue
        batch = config.batch_size * stage.batches_per_step(config)
        with tempfile.TemporaryDirectory() as scratch:
            check_batch = (dataset.x_train[:config.batch_size], dataset.y_train[:config.batch_size])
            callbacks = stage.callbacks(recipes.StageContext(config, scratch, check_batch, stage.name))
            n = warmup + steps + 1
            x, y = dataset.x_train[:batch * n], dataset.y_train[:batch * n]
            batches = data.TrainData(x, y, batch, config.augment, config.seed).epochs(0, 1).repeat()
            ends = []  # at each step's end: (wall clock, the machine's busy CPU seconds, this process's)
            callbacks.append(keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(
                (time.perf_counter(), busy_cpu_seconds(), time.process_time()))))
            model = stage.model(parts, optimizers, config)
            model.fit(batches, epochs=1, steps_per_epoch=n, callbacks=callbacks, verbose=verbose, shuffle=False)
        if len(ends) != n:
            raise RuntimeError(f"the {stage.name} step probe stopped after {len(ends)} of {n} steps")
        (start, busy_start, own_start), (end, busy_end, own_end) = ends[warmup], ends[-1]
        if busy_start is not None:
            others = ((busy_end - busy_start) - (own_end - own_start)) / (end - start)
            if others > OTHERS_LIMIT:
                raise BusyMachine(f"other processes used {others:.2f} CPU cores while the {stage.name} step was "
                                  f"timed (at most {OTHERS_LIMIT:g} allowed)")
        seconds[stage.name] = (end - start) / steps
    return seconds


def load_trained_weights(parts, run_dir):
    """Sets a run's models to the weights its directory holds (D from discriminator.keras, G from
    generator.keras, which holds G's average when the run keeps one), and starts their weight
    averages there."""
    parts.discriminator.set_weights(rundir.load_model(os.path.join(run_dir, rundir.DISCRIMINATOR)).get_weights())
    if parts.generator is not None:
        parts.generator.set_weights(rundir.load_model(os.path.join(run_dir, rundir.GENERATOR)).get_weights())
    for average in (parts.average, parts.generator_average):
        if average is not None:
            for kept, variable in zip(average.averages, average.source):
                kept.assign(variable)


def keep_cotrained(out_dir):
    """An `after_stage` hook for trainer.train: at the end of Rob-GAN's co-training, saves its
    checkpoint once more, in out_dir/cotrained, so that other fine-tunings can start from it."""
    def hook(stage, manager):
        if stage != "cotrain":
            return
        final = os.path.join(out_dir, COTRAINED)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tf.train.CheckpointManager(manager.checkpoint, tmp, max_to_keep=1).save()
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return hook


def start_from_cotrained(source_dir, out_dir, columns):
    """Starts a new Rob-GAN run in out_dir where source_dir's co-training ended: its `cotrained/`
    checkpoint becomes out_dir's latest, with the co-training rows of its metrics.csv, its samples
    and its GAN-test reference classifier. Training out_dir then only fine-tunes."""
    kept = os.path.join(source_dir, COTRAINED)
    index = tf.io.gfile.glob(os.path.join(kept, "*.index"))
    if len(index) != 1:
        raise rundir.RunDirError(f"{source_dir} has no checkpoint from the end of its co-training ({kept})")
    if os.path.exists(os.path.join(out_dir, rundir.CONFIG)):
        raise rundir.RunDirError(f"{out_dir} already holds a run")
    rows = [r for r in rundir.read_metrics_rows(source_dir) if r["stage"] == "cotrain"]
    os.makedirs(os.path.join(out_dir, rundir.SAMPLES), exist_ok=True)
    for row in rows:
        name = f"epoch_{int(row['epoch']):03d}.png"
        if os.path.exists(os.path.join(source_dir, rundir.SAMPLES, name)):
            shutil.copy2(os.path.join(source_dir, rundir.SAMPLES, name), os.path.join(out_dir, rundir.SAMPLES, name))
    if os.path.exists(os.path.join(source_dir, rundir.REFERENCE_CLASSIFIER)):
        shutil.copy2(os.path.join(source_dir, rundir.REFERENCE_CLASSIFIER), out_dir)
    if os.path.exists(os.path.join(out_dir, rundir.METRICS_CSV)):  # from an interrupted start
        os.remove(os.path.join(out_dir, rundir.METRICS_CSV))
    for row in rows:
        rundir.write_metrics_row(out_dir, row, columns)
    checkpoints = os.path.join(out_dir, rundir.CHECKPOINTS)
    os.makedirs(checkpoints, exist_ok=True)
    for name in sorted(os.listdir(kept), key=lambda name: name == "checkpoint"):  # the run starts there
        shutil.copy2(os.path.join(kept, name), checkpoints)  # once its latest-checkpoint file is copied


def study_bars(rows, path, title=None):
    """Clean, PGD-20 and autoattack accuracy per method, with their 95% intervals."""
    keys = (("clean", "clean"), ("pgd20", "PGD-20"), ("autoattack", "autoattack"))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        values = np.array([100 * r[key] for r in rows])
        ci = np.array([[100 * (r[key] - r[key + "_ci95"][0]), 100 * (r[key + "_ci95"][1] - r[key])] for r in rows]).T
        ax.bar(np.arange(len(rows)) + (k - 1) * width, values, width, yerr=ci, capsize=3, label=label)
    names = ["\n".join(textwrap.wrap(r["method"].replace("+", "+ "), 16)).replace("+ ", "+") for r in rows]  # wrapped
    ax.set_xticks(np.arange(len(rows)), names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(keys), frameon=False)  # under the names
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # the legend below the axes included
    plt.close(fig)

