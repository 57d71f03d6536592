"""Autoattack accuracy against the study budget: one line per method across studies that differ only
in --budget-minutes (bench/results/study-*.json, as bench/study.py writes them).

    python bench/budget_curve.py bench/results/study-cifar10-1000-30.json bench/results/study-cifar10-1000-45.json \
        --out docs/study_cifar10_1000_budget.png
"""

import argparse
import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def points(paths):
    """{method: [(budget minutes, autoattack %, (low %, high %))]} over the studies' rows."""
    lines = {}
    for path in paths:
        with open(path) as f:
            summary = json.load(f)
        for row in summary["rows"]:
            budget = summary["state"]["methods"][row["method"]]["budget_minutes"]
            low, high = row["autoattack_ci95"]
            lines.setdefault(row["method"], []).append((budget, 100 * row["autoattack"], (100 * low, 100 * high)))
    return {method: sorted(p) for method, p in lines.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", help="bench/results/study-*.json files")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="autoattack accuracy at equal total time (1,000 test images, Wilson 95%)")
    args = p.parse_args(argv)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lines = points(args.studies)
    for k, (method, pts) in enumerate(lines.items()):
        budgets, accuracy, ci = zip(*pts)
        errors = [[a - lo for a, (lo, _) in zip(accuracy, ci)], [hi - a for a, (_, hi) in zip(accuracy, ci)]]
        shift = [b + 0.4 * (k - (len(lines) - 1) / 2) for b in budgets]  # side by side: intervals apart
        ax.errorbar(shift, accuracy, yerr=errors, marker="o", capsize=3, label=method)
        for b, a in zip(shift, accuracy):
            ax.annotate(f"{a:.1f}", (b, a), textcoords="offset points", xytext=(6, -3), fontsize=8)
    ax.set_xlabel("budget per method, minutes (with --count-generator, a generator's training\nand sampling are in it)",
                  fontsize=9)
    ax.set_ylabel("autoattack accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(textwrap.fill(args.title, 80), fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
