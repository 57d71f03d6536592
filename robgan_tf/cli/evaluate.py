"""Robustness evaluation: python evaluate.py --model checkpoints/mnist-robgan --data-dir ../shared/data"""

import argparse
import dataclasses
import os
import sys

import tensorflow as tf

from robgan_tf import config as cfg
from robgan_tf import data, evaluation, plots, report, rundir


def parser():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True,
                   help="a train.py run directory, a .keras file, or an exported SavedModel (float input)")
    p.add_argument("--dataset", help="dataset name (default: the run directory's, else required)")
    p.add_argument("--data-dir", help="folder with <dataset>_test.npz; without it, tensorflow_datasets")
    p.add_argument("--tfds-dir", help="tensorflow_datasets data_dir")
    p.add_argument("--attack", choices=evaluation.ATTACK_CHOICES, default="autoattack",
                   help="autoattack = APGD-CE, APGD-T, Square on the points still robust; also reports its "
                        "parts and PGD (default: autoattack)")
    p.add_argument("--eps", type=float, nargs="+",
                   help="L-inf radius (one or more) in pixel units (default: the run's, else mnist 0.3, others 8/255)")
    p.add_argument("--check-masking", action="store_true",
                   help="add eps/3, 2eps/3 and a large eps (--large-eps) and PGD-100 with 5 restarts, for the "
                        "gradient-masking checks")
    p.add_argument("--large-eps", type=float, help=f"eps at which accuracy must reach ~0 (default: mnist "
                                                   f"{cfg.large_eps('mnist')}, others {cfg.LARGE_EPS_OTHERS})")
    p.add_argument("--n-examples", type=int, default=1000, help="stratified, shuffled test examples (default: 1000)")
    p.add_argument("--out", help="report folder (default: <run directory>/evaluation, else ./evaluation)")
    cfg.add_arguments(p, cfg.AttackSettings)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.n_examples < 1:
        print(f"error: --n-examples {args.n_examples}: it must be >= 1", file=sys.stderr)
        return 1
    eps_range = cfg.Config.__dataclass_fields__["eps"].metadata["valid"]  # train.py's --eps range
    large = [] if args.large_eps is None else [args.large_eps]
    for name, values in (("--eps", args.eps or []), ("--large-eps", large)):
        bad = [v for v in values if v not in eps_range]
        if bad:
            print(f"error: {name} {bad[0]:g} is out of range: it must be {eps_range}", file=sys.stderr)
            return 1
    run_config = None
    if os.path.isfile(os.path.join(args.model, rundir.CONFIG)):
        run_config = rundir.read_config(args.model)[0]
    dataset_name = args.dataset or (run_config.dataset if run_config else None)
    if not dataset_name:
        print("error: --dataset is needed when --model is not a train.py run directory", file=sys.stderr)
        return 2
    eps_values = args.eps or [run_config.eps if run_config else cfg.dataset_defaults(dataset_name).get(
        "eps", cfg.Config.eps)]
    large_eps = args.large_eps or cfg.large_eps(dataset_name)
    out = args.out or (os.path.join(args.model, "evaluation") if run_config else "evaluation")
    settings = cfg.AttackSettings(**cfg.given(args, cfg.AttackSettings))
    try:
        cfg.check(settings)  # a ConfigError (a ValueError) naming the flag
        dataset = data.load(dataset_name, args.data_dir, args.tfds_dir)
        logits_fn = evaluation.load_classifier(args.model)
    except (data.DataError, rundir.RunDirError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    x, y = data.subset(dataset.x_test, dataset.y_test, args.n_examples, settings.seed)
    predictor = evaluation.Evaluator(logits_fn, verbose=False)  # for the shape check and the picture
    try:
        predictor.predict(data.to_float(x[:1]).numpy())
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        print(f"error: the model does not take {dataset_name} images of shape {x.shape[1:]}: "
              f"{str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    attack = evaluation.attack_named(args.attack, settings)
    result = evaluation.evaluate(logits_fn, x, y, eps_values, attack, settings, args.check_masking, large_eps)

    summary = report.build(result, model=args.model, dataset=dataset_name, seed=settings.seed, attack=args.attack,
                           eps=sorted(eps_values), large_eps=large_eps if args.check_masking else None,
                           settings=dataclasses.asdict(settings))
    report.write(summary, result, out)
    plots.robustness_curve(result["robust_accuracy"], result["clean_accuracy"], os.path.join(out, report.CURVE_PNG),
                           title=f"{dataset_name} test, {len(y)} examples")
    _example_grid(predictor, x, y, result, max(eps_values), dataset.class_names, out)
    print(report.markdown(summary))
    print(f"wrote {out}/{{{report.REPORT_JSON}, {report.REPORT_MD}, {report.CURVE_PNG}, {report.EXAMPLES_PNG}}}")
    if summary["possible_gradient_masking"]:
        print("WARNING: POSSIBLE GRADIENT MASKING: the robust accuracies above may overstate robustness; "
              "see the failed checks.")
    return 0


def _example_grid(predictor, x, y, result, eps, class_names, out):
    """Clean and adversarial images at the largest eps, fooled examples first."""
    x = data.to_float(x).numpy()
    x_adv = result["adversarial"][evaluation.eps_key(eps)]
    clean_pred, adv_pred = predictor.predict(x), predictor.predict(x_adv)
    order = sorted(range(len(y)), key=lambda i: (adv_pred[i] == y[i], clean_pred[i] != y[i]))[:8]
    plots.adversarial_examples(x[order], x_adv[order], y[order], clean_pred[order], adv_pred[order], class_names,
                               os.path.join(out, report.EXAMPLES_PNG), title=f"eps={eps:.4g}")


if __name__ == "__main__":
    sys.exit(main())
