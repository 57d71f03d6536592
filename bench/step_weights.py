"""Does a training step cost more once the weights are trained? python bench/step_weights.py --run <run dir>

A study's Rob-GAN run (BENCHMARKS.md, "Study: cifar10-5000, attempt 4") ran its late epochs
slower than its probed step. This times the run's training steps as the study does
(study_runs.probe_step_seconds: 50 steps through `fit` after 3 of warm-up, every stage) with
fresh weights and with the run's trained ones (its discriminator.keras and generator.keras),
alternating, --repeats times each, so that a drift of the machine's speed shows as a spread
within each kind rather than as a difference between them. Prints a table and writes JSON.
"""

import argparse
import json
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robgan_tf import data, rundir  # noqa: E402
from study_runs import probe_step_seconds  # noqa: E402


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train.py run directory (its config.json and saved models)")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--repeats", type=int, default=2, help="timings of each kind, alternating")
    p.add_argument("--json", default=os.path.join("bench", "results", "step_weights.json"))
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        config, _ = rundir.read_config(args.run)
        for name in (rundir.DISCRIMINATOR, rundir.GENERATOR):
            if not os.path.isfile(os.path.join(args.run, name)):
                raise rundir.RunDirError(f"{args.run} has no {name}: train it to the end first")
        dataset = data.load(config.dataset, args.data_dir)
    except (rundir.RunDirError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    timings = []
    for repeat in range(args.repeats):
        for weights in ("fresh", "trained"):
            print(f"== {weights} weights, timing {repeat + 1} of {args.repeats} ...", flush=True)
            seconds = probe_step_seconds(config, dataset, verbose=0,
                                         weights_from=args.run if weights == "trained" else None)
            timings.append({"weights": weights, "repeat": repeat + 1, "step_seconds": seconds})
    rows = []
    for stage in timings[0]["step_seconds"]:
        for weights in ("fresh", "trained"):
            each = [t["step_seconds"][stage] for t in timings if t["weights"] == weights]
            rows.append({"stage": stage, "weights": weights, "seconds": [round(s, 3) for s in each],
                         "median": round(statistics.median(each), 3)})
    print("| stage | weights | s a step, each timing | median |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['weights']} | {', '.join(f'{s:.3f}' for s in r['seconds'])} | {r['median']:.3f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"run": args.run, "machine": platform.platform(), "cpus": os.cpu_count(),
                   "command": "python bench/step_weights.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "rows": rows, "timings": timings}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
