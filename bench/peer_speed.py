"""Our training step against the official Rob-GAN code's, side by side on this machine:
python bench/peer_speed.py --official /tmp/robgan-official --torch-python /tmp/peer-venv/bin/python

Both sides at the official CIFAR-10 settings: batch 64, PGD-5, one G update per 5 D updates,
D 128 channels x 4 residual blocks, ours with G at --g-width 256 (about the official G's FLOPs).
Units, in seconds per D iteration of 64 real images (median of timed windows after warm-up):
  pgd5    one D iteration without G: PGD-5 on the reals, then the update on them
          (ours: a PGD-AT step of D's classifier)
  robgan  Rob-GAN co-training: per D iteration the attack, D's update on attacked reals and
          fakes, and a fifth of a G update (ours: a co-training step of 5 D updates, / 5)
The official side (bench/peer_speed_torch.py) runs under --torch-python, a Python with torch,
importing the model classes from --official, a clone of github.com/xuanqing94/RobGAN made at
benchmark time (see bench/peer_speed.md); ours runs once per --mixed-precision. Each side runs
alone, in its own process, with --threads intra-op threads. The table states each side's forward
FLOPs per image of D and G (2 x the multiply-adds of convolutions and matrix products) and the
ratio official / ours (above 1: ours is faster); the JSON also holds the machine (lscpu) and both
commits.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import machine_info  # noqa: E402  (bench/, the script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
UNITS = ("pgd5", "robgan")
# The official attack on [-1, 1] images: eps 0.03125, step 0.0078; on our [0, 1] images, halved.
OFFICIAL = dict(width=128, g_width=256, depth=4, z_dim=128, batch_size=64, pgd_steps=5, eps=0.03125 / 2,
                pgd_step_size=0.0078 / 2)
N_DIS = 5


def ours(unit, mixed_precision, data_dir, warmup, windows):
    """Seconds per D iteration of our step `unit`, and D's and G's forward FLOPs per image."""
    import tensorflow as tf

    from robgan_tf import data, distribute, methods, trainer
    from step_speed import model_flops, timed

    dataset = data.load("cifar10", data_dir)
    method = methods.get("robgan" if unit == "robgan" else "pgd-at")
    n_dis = N_DIS if unit == "robgan" else 1
    config = methods.config_for("cifar10", method.name, {**OFFICIAL, "n_dis": n_dis,
                                                         "mixed_precision": mixed_precision})
    x = data.to_float(dataset.x_train[:config.batch_size * n_dis])
    y = tf.constant(dataset.y_train[:config.batch_size * n_dis].astype("int32"))
    with distribute.dtype_policy(config.mixed_precision):
        parts = trainer.build_parts(config, dataset, method)
        optimizers = method.optimizers(config, parts, {stage.name: 1000 for stage in method.stages})
        model = method.stages[0].model(parts, optimizers, config)
        model.make_train_function()
        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        step = timed(lambda: model.train_function(iterator), {"warmup": warmup, "windows": windows,
                                                              "window_steps": 1}, config.batch_size)
        flops = model_flops(config, dataset)
    return {"seconds_per_d_iteration": step["seconds_per_step"] / n_dis,
            "windows": [w / n_dis for w in step["window_seconds"]], "spectral_norm": config.spectral_norm, **flops}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="a local clone of github.com/xuanqing94/RobGAN (not needed with --ours-only)")
    p.add_argument("--torch-python", help="a Python that has torch (not needed with --ours-only)")
    p.add_argument("--ours-only", action="store_true", help="time our side only")
    p.add_argument("--units", nargs="+", default=list(UNITS), choices=UNITS)
    p.add_argument("--mixed-precision", nargs="+", default=["none", "mixed_bfloat16"],
                   choices=("none", "mixed_bfloat16", "mixed_float16"), help="our compute dtypes to time")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads on both sides")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--out", default=os.path.join("bench", "results", "peer_speed.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(ours(spec["unit"], spec["mixed_precision"], args.data_dir, args.warmup,
                                          args.windows)))
        return 0
    data_file = os.path.join(args.data_dir, "cifar10_train.npz")
    if not os.path.exists(data_file):
        p.error(f"no CIFAR-10 data at {data_file}: pass --data-dir")
    if not args.ours_only:
        if not (args.official and os.path.exists(os.path.join(args.official, "dis_models", "resnet_32.py"))):
            p.error("--official must be a clone of github.com/xuanqing94/RobGAN (see bench/peer_speed.md)")
        if not args.torch_python:
            p.error("--torch-python must be a Python with torch installed (see bench/peer_speed.md)")

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": str(args.threads),
           "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": str(args.threads)}

    def run(command, label):
        print(f"timing {label} ...", flush=True)
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
        return json.loads(lines[-1][7:])

    from robgan_tf import distribute

    machine, started = {**machine_info(), "bf16_hardware": distribute.bf16_hardware()}, time.time()
    print(f"CPU: {machine.get('cpu_model', '?')}, {machine['cpus']} CPUs, bfloat16 hardware: "
          f"{machine['bf16_hardware'] or 'none found'}; {args.threads} threads a side", flush=True)
    result = {"machine": machine, "command": "python bench/peer_speed.py " + " ".join(argv or sys.argv[1:]),
              "commit": git_commit(os.path.dirname(HERE)), "settings": {**OFFICIAL, "n_dis": N_DIS},
              "threads": args.threads, "ours": {}}
    if not args.ours_only:
        result["official_commit"] = git_commit(args.official)
        result["official"] = run([args.torch_python, os.path.join(HERE, "peer_speed_torch.py"), "--official",
                                  args.official, "--data", data_file, "--threads", str(args.threads),
                                  "--warmup", str(args.warmup), "--windows", str(args.windows),
                                  "--units", *args.units], "the official step")
    for precision in args.mixed_precision:
        for unit in args.units:
            spec = json.dumps({"unit": unit, "mixed_precision": precision})
            result["ours"][f"{unit}/{precision}"] = run(
                [sys.executable, os.path.abspath(__file__), "--child", spec, "--data-dir", args.data_dir,
                 "--warmup", str(args.warmup), "--windows", str(args.windows)], f"ours {unit} {precision}")
    result["wall_seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(table(result, args.units, args.mixed_precision))
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


def git_commit(path):
    proc = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


def table(result, units, precisions):
    """Seconds per D iteration of 64 images, each side, and official / ours; then the model FLOPs."""
    official = result.get("official", {})
    lines = ["| unit | official s | " + " | ".join(f"ours {p} s | ratio" for p in precisions) + " |",
             "|---|---|" + "---|---|" * len(precisions)]
    for unit in units:
        theirs = official.get(unit, {}).get("seconds_per_d_iteration")
        cells = [f"{theirs:.2f}" if theirs else "-"]
        for precision in precisions:
            mine = result["ours"][f"{unit}/{precision}"]["seconds_per_d_iteration"]
            cells += [f"{mine:.2f}", f"{theirs / mine:.2f}x" if theirs else "-"]
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    mine = next(iter(result["ours"].values()))
    lines += ["", "| forward GFLOP per image | official | ours |", "|---|---|---|"]
    for part in ("d", "g"):
        theirs = official.get(f"{part}_forward_flops")
        lines.append(f"| {part.upper()} | {theirs / 1e9:.3f} |" if theirs else f"| {part.upper()} | - |")
        lines[-1] += f" {mine[f'{part}_forward_flops'] / 1e9:.3f} |"
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
