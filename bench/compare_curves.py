"""Validation curves of several runs on one chart: python bench/compare_curves.py RUN[=LABEL] ... --out PNG

Each run directory's metrics.csv gives, per validated epoch, PGD-10 accuracy on its validation split
(held out of the training data); the chart draws it against the epoch for every run, with each run's
kept (best) epoch marked, so that runs of one study can be compared at equal epochs. Runs whose epochs
hold different numbers of steps are not comparable this way: say so beside the chart.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robgan_tf import rundir  # noqa: E402
from robgan_tf.plots import plt  # noqa: E402  (matplotlib with the Agg backend)


def validation_curve(run):
    """(epochs, validation PGD-10 accuracies, the kept epoch or None) of a run directory."""
    if not os.path.exists(os.path.join(run, rundir.METRICS_CSV)):
        raise SystemExit(f"{run}: no {rundir.METRICS_CSV} (not a run directory of train.py?)")
    rows = [r for r in rundir.read_metrics_rows(run) if r.get("val_pgd10_acc")]
    if not rows:
        raise SystemExit(f"{run}: its {rundir.METRICS_CSV} has no validation PGD-10 (trained without --val-examples)")
    best = rundir.read_best(run)
    return ([int(r["epoch"]) for r in rows], [100 * float(r["val_pgd10_acc"]) for r in rows],
            best.get("epoch") if best else None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN[=LABEL]", help="run directories, each with an optional label")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--title")
    args = p.parse_args(argv)
    curves = []
    for spec in args.runs:
        run, _, label = spec.partition("=")
        curves.append((label or os.path.basename(os.path.normpath(run)), *validation_curve(run)))
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, epochs, accuracy, best in curves:
        line, = ax.plot(epochs, accuracy, label=label)
        if best in epochs:
            ax.plot([best], [accuracy[epochs.index(best)]], "o", color=line.get_color())
    ax.set_xlabel("epoch (a dot marks the kept epoch)")
    ax.set_ylabel("validation PGD-10 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if args.title:
        ax.set_title(args.title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
