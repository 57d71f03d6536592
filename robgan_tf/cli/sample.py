"""Make a generated training set: python sample.py --generator checkpoints/mnist-robgan --n 50000 --out gen.npz

The set is class-balanced, in --data-dir's npz format, written in resumable chunks with its
metadata (<out>.json) beside it; use it with train.py --synthetic <out>.npz.
"""

import argparse
import os
import sys


from robgan_tf import rundir, synthetic


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="a run directory of a GAN method, or its generator.keras")
    p.add_argument("--n", type=int, required=True, help="samples in all (a multiple of the number of classes)")
    p.add_argument("--out", required=True, help="the .npz to write (rerun the same command to resume)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--chunk", type=int, default=1000, help="candidates drawn per chunk on disk (default: 1000)")
    p.add_argument("--filter", help="a classifier (.keras, or a run directory's classifier.keras): a sample "
                                    "stays if the asked class is its top class")
    p.add_argument("--threshold", type=float, default=0.0, help="with --filter: and its confidence in it is at "
                                                                  "least this")
    return p


def _model_path(path, name):
    return os.path.join(path, name) if os.path.isdir(path) else path


def main(argv=None):
    args = parser().parse_args(argv)
    generator_path = _model_path(args.generator, rundir.GENERATOR)
    filter_path = _model_path(args.filter, rundir.CLASSIFIER) if args.filter else None
    problem = next((text for bad, text in (
        (args.chunk < 1, f"--chunk {args.chunk}: it must be >= 1"),
        (not 0 <= args.threshold < 1, f"--threshold {args.threshold}: it must be in [0, 1)"),
        (args.threshold and not args.filter, "--threshold needs --filter <classifier>"),
        (not os.path.isfile(generator_path), f"--generator: no {generator_path}"),
        (filter_path and not os.path.isfile(filter_path), f"--filter: no {filter_path}"),
        (os.path.exists(args.out) and not os.path.isdir(args.out + ".parts"),
         f"{args.out} exists and is not an unfinished sampling run; choose another --out"),
    ) if bad), None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        generator = rundir.load_model(generator_path)
        keep = rundir.load_model(filter_path) if filter_path else None
        metadata = synthetic.write(generator, args.n, args.out, args.seed, args.chunk, keep, args.threshold,
                                   describe={"generator": os.path.abspath(generator_path),
                                             "filter": filter_path and os.path.abspath(filter_path)})
    except (synthetic.SampleError, rundir.RunDirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {metadata['n']} samples ({metadata['per_class']} per class, {metadata['kept_fraction']:.0%} of "
          f"{metadata['candidates_drawn']} drawn) to {args.out}; metadata in {synthetic.metadata_path(args.out)}")
    return 0
