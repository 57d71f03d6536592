"""The files of a robustness evaluation: report.json, report.md and robust_examples.npz."""

import json
import os

import numpy as np

from robgan_tf.evaluation import wilson_interval

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ROBUST_EXAMPLES = "robust_examples.npz"
CURVE_PNG = "robustness_curve.png"
EXAMPLES_PNG = "adversarial_examples.png"


def build(result, **meta):
    """The JSON report of an `evaluation.evaluate` result: accuracies with Wilson 95% intervals,
    the composition's stages, the masking checks, settings and timings, plus `meta`."""
    n = result["n_examples"]
    interval = lambda acc: [round(v, 4) for v in wilson_interval(acc, n)]  # noqa: E731
    masking = [c for c in result["masking_checks"] if c["passed"] is False]
    return {
        **meta,
        "split": "test",
        "n_examples": n,
        "clean_accuracy": result["clean_accuracy"],
        "clean_accuracy_ci95": interval(result["clean_accuracy"]),
        "robust_accuracy": result["robust_accuracy"],
        "robust_accuracy_ci95": {attack: {eps: interval(acc) for eps, acc in by_eps.items()}
                                 for attack, by_eps in result["robust_accuracy"].items()},
        "autoattack_stages": result["autoattack_stages"],
        "masking_checks": result["masking_checks"],
        "possible_gradient_masking": bool(masking),
        "seconds": result["seconds"],
    }


def write(report, result, out_dir):
    """Writes report.json, report.md and the per-example robustness (for paired tests)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, REPORT_JSON), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, REPORT_MD), "w") as f:
        f.write(markdown(report))
    np.savez_compressed(os.path.join(out_dir, ROBUST_EXAMPLES),
                        **{f"{attack}@{eps}": robust for attack, by_eps in result["robust_examples"].items()
                           for eps, robust in by_eps.items()})


def markdown(report):
    """The report as a short Markdown page: a table of accuracies, then the masking checks."""
    pct = lambda acc, ci: f"{100 * acc:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"  # noqa: E731
    lines = [f"# Robustness of {report.get('model', 'a classifier')}", "",
             f"{report.get('dataset', '')} test split, {report['n_examples']} examples, seed {report.get('seed')}; "
             f"accuracy with its Wilson 95% interval.", "",
             "| attack | eps | accuracy | seconds |", "|---|---|---|---|",
             f"| clean | 0 | {pct(report['clean_accuracy'], report['clean_accuracy_ci95'])} | |"]
    for attack, by_eps in report["robust_accuracy"].items():
        for eps in sorted(by_eps, key=float):
            seconds = report["seconds"].get(attack, {}).get(eps, "")
            lines.append(f"| {attack} | {eps} | {pct(by_eps[eps], report['robust_accuracy_ci95'][attack][eps])} "
                         f"| {seconds} |")
    for eps, stages in report["autoattack_stages"].items():
        chain = ", then ".join(f"{part} {100 * acc:.1f}%" for part, acc in stages.items())
        lines += ["", f"AutoAttack at eps={eps}, robust after each part: {chain}."]
    lines += ["", "## Gradient-masking checks", ""]
    for c in report["masking_checks"]:
        mark = {True: "pass", False: "**POSSIBLE GRADIENT MASKING**", None: "skipped"}[c["passed"]]
        lines.append(f"- {c['check']}: {mark} ({c['detail']})")
    if "settings" in report:
        lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()) + "."]
    return "\n".join(lines) + "\n"
