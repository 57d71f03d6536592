"""Training-step speed and memory against the hardware limit: python bench/step_speed.py

For MNIST and CIFAR-10 it times, each in its own process (so peak memory is its own):
  plain     a standard training step of the classifier (D's trunk and class head)
  pgd-at    a PGD-k adversarial-training step
  robgan    a Rob-GAN co-training step (D and G updates)
  finetune  a Rob-GAN fine-tuning step
  pass-d    one forward+backward pass of D (both heads) over the batch: the unit of cost
  pass-g    one forward+backward pass of G over the batch (and fwd-g: a forward pass alone)
in three modes: eager (run_eagerly), function (tf.function, train.py's default) and xla
(jit_compile). Images/second is the median over timed windows after warm-up (5 windows of 3
steps; eager and xla, slow on a CPU: 3 windows of 1 step). Each step's
cost is then stated as a multiple of its limit, the passes the algorithm cannot avoid:
  plain 1·D,  pgd-at (k+1)·D,  robgan (k + r + 1)·D + 1·G  (r = D's batches per update:
  attacked reals, clean reals when D's real/fake head sees them, fakes; G's update is one pass
  of G and one of D),  finetune (2k + 2)·D + fwd-G.
With --pipeline-check it also times pgd-at and robgan fed by the real input pipeline, against
a batch already in memory. --mixed-precision computes in bfloat16/float16 (the attacks' input
gradients stay float32); the JSON records the CPU (lscpu) and whether it has bf16 arithmetic.

Each step is also stated in model FLOPs and achieved GFLOP/s. A forward pass of D or G costs
F_D, F_G: 2 x the multiply-adds of its convolutions and matrix products per image, read from the
shapes in its graph. A backward pass to the input costs about F again, and one to the weights too:
  plain 3 F_D,  pgd-at 2k F_D + 3 F_D,  robgan 2k F_D + 3r F_D + F_G + (2 F_G + 2 F_D)  (G's update
  reuses D's fakes: D forward and backward to the image, G backward),
  finetune 4k F_D + 6 F_D + F_G,  pass-d 3 F_D,  pass-g 3 F_G,  fwd-g F_G   (per image).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import machine_info  # noqa: E402  (bench/, the script's directory)

STEPS = ("pass-d", "pass-g", "fwd-g", "plain", "pgd-at", "robgan", "finetune")
MODES = ("eager", "function", "xla")


def child(spec):
    """Runs one configuration in this process and returns its measurements."""
    from robgan_tf import data, distribute, methods

    dataset = data.load(spec["dataset"], spec["data_dir"])
    step, mode = spec["step"], spec["mode"]
    method = methods.get({"plain": "pgd-at", "pgd-at": "pgd-at"}.get(step, "robgan"))
    # one D update per step, as limits() counts, and the same D (real/fake head normalised) for every step
    config = methods.config_for(spec["dataset"], method.name, {**spec["model"], "xla": mode == "xla", "n_dis": 1,
                                                               "spectral_norm": "head",
                                                               "mixed_precision": spec["mixed_precision"]})
    if step == "plain":
        config = config.replace(pgd_steps=0)  # standard training: no attack
    with distribute.dtype_policy(config.mixed_precision):
        if step == "flops":
            return model_flops(config, dataset)
        return timed(step_function(spec, config, dataset, method), spec, config.batch_size)


def model_flops(config, dataset):
    """F_D and F_G: the forward-pass model FLOPs per image of D and G."""
    import tensorflow as tf

    from robgan_tf import models

    discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes, config.width, config.depth,
                                               config.spectral_norm)
    generator = models.build_generator(dataset.image_shape, dataset.num_classes, config.g_width, config.z_dim)

    def images(n):
        return [tf.TensorSpec((n, *dataset.image_shape), tf.float32)]

    def codes(n):
        return [tf.TensorSpec((n, config.z_dim), tf.float32), tf.TensorSpec((n,), tf.int32)]

    return {"d_forward_flops": per_image_flops(discriminator, images),
            "g_forward_flops": per_image_flops(generator, codes)}


def per_image_flops(model, specs):
    """2 x the multiply-adds of every Conv2D and MatMul in `model`'s inference graph, per image:
    the graph's count for 2 images less its count for 1, which leaves out work on the weights
    alone (such as spectral norm's power iteration)."""
    import tensorflow as tf

    def graph_flops(n):
        inputs = specs(n)
        graph = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False)) \
            .get_concrete_function(*inputs).graph
        total = 0
        for op in graph.get_operations():
            if op.type == "Conv2D":  # output elements x (kernel height x width x input channels)
                kernel = op.inputs[1].shape
                total += 2 * op.outputs[0].shape.num_elements() * kernel[0] * kernel[1] * kernel[2]
            elif op.type in ("MatMul", "BatchMatMulV2"):  # output elements x the contracted size
                a = op.inputs[0].shape
                contracted = a[-2] if op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x") else a[-1]
                total += 2 * op.outputs[0].shape.num_elements() * contracted
        return total

    return graph_flops(2) - graph_flops(1)


def step_function(spec, config, dataset, method):
    """A function that runs one step of `spec["step"]` in `spec["mode"]`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from robgan_tf import data, models, trainer

    step, mode = spec["step"], spec["mode"]
    batch = config.batch_size
    keras.utils.set_random_seed(0)
    x = data.to_float(dataset.x_train[:batch])
    y = tf.constant(dataset.y_train[:batch].astype(np.int32))

    if step in ("pass-d", "pass-g", "fwd-g"):
        generator = models.build_generator(dataset.image_shape, dataset.num_classes, config.g_width)
        discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes, config.width,
                                                   config.depth, config.spectral_norm)
        z = tf.random.normal((batch, config.z_dim))

        def one_pass():
            with tf.GradientTape() as tape:
                if step == "pass-d":
                    out = discriminator(x, training=True)
                    loss = tf.reduce_sum(out["adv"]) + tf.reduce_sum(out["cls"])
                else:
                    loss = tf.reduce_sum(generator([z, y], training=True))
            if step == "fwd-g":
                return loss
            variables = (discriminator if step == "pass-d" else generator).trainable_variables
            return tape.gradient(loss, variables)
        run = one_pass if mode == "eager" else tf.function(one_pass, jit_compile=mode == "xla")
    else:
        parts = trainer.build_parts(config, dataset, method)
        optimizers = method.optimizers(config, parts, {stage.name: 1000 for stage in method.stages})
        stage = method.stages[1 if step == "finetune" else 0]
        model = stage.model(parts, optimizers, config)
        model.run_eagerly = mode == "eager"
        if spec.get("pipeline"):
            batches = data.TrainData(dataset.x_train, dataset.y_train, batch, config.augment).epochs(0, 1000)
        else:
            batches = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
        model.make_train_function()
        iterator = iter(batches)
        run = lambda: model.train_function(iterator)  # noqa: E731
    return run


def timed(run, spec, batch):
    """Seconds per step of `run` (median of the timed windows after warm-up) and peak memory."""
    import tensorflow as tf

    started = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, run())
    first = time.perf_counter() - started
    for _ in range(spec["warmup"] - 1):
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, run())
    windows = []
    for _ in range(spec["windows"]):
        started = time.perf_counter()
        for _ in range(spec["window_steps"]):
            out = run()
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)  # wait for the device
        windows.append((time.perf_counter() - started) / spec["window_steps"])
    seconds = statistics.median(windows)
    return {"seconds_per_step": seconds, "images_per_second": batch / seconds, "first_step_seconds": first,
            "window_seconds": windows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def limits(cfg, real_rf_input):
    """Passes of D and G each step needs: {step: (D passes, G passes, G forward passes)}."""
    k = cfg["pgd_steps"]
    d_batches = 3 if real_rf_input == "clean" else 2
    return {"plain": (1, 0, 0), "pgd-at": (k + 1, 0, 0), "robgan": (k + d_batches + 1, 1, 0),
            "finetune": (2 * k + 2, 0, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="paper-scale models instead of the --quick CPU preset")
    p.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--windows", type=int, default=5, help="timed windows per configuration (median reported)")
    p.add_argument("--window-steps", type=int, default=3, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one traces)")
    p.add_argument("--pipeline-check", action="store_true",
                   help="also time pgd-at and robgan fed by the real input pipeline (function mode)")
    p.add_argument("--mixed-precision", default="none", choices=("none", "mixed_bfloat16", "mixed_float16"),
                   help="compute in bfloat16/float16 (attack input gradients stay float32)")
    p.add_argument("--out", default=os.path.join("bench", "results", "step_speed.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return 0

    from robgan_tf import distribute, methods
    from robgan_tf.config import PRESETS

    preset = PRESETS["full" if args.full else "quick"]
    plan = [(d, s, m, False) for d in args.datasets for s in args.steps for m in args.modes]
    if args.pipeline_check:
        plan += [(d, s, "function", True) for d in args.datasets for s in ("pgd-at", "robgan")]
    machine = {**machine_info(), "bf16_hardware": distribute.bf16_hardware()}
    print(f"CPU: {machine.get('cpu_model', '?')}, {machine['cpus']} CPUs, bfloat16 hardware: "
          f"{machine['bf16_hardware'] or 'none found'}; computing in {args.mixed_precision}", flush=True)
    rows, started = [], time.time()

    def run_child(dataset, step, mode="function", pipeline=False):
        slow = mode != "function"  # eager and (on CPU) XLA steps are slow: fewer, shorter windows
        spec = {"dataset": dataset, "data_dir": args.data_dir, "model": preset[dataset], "step": step,
                "mode": mode, "pipeline": pipeline, "mixed_precision": args.mixed_precision,
                "warmup": 1 if slow else args.warmup, "windows": 3 if slow else args.windows,
                "window_steps": 1 if slow else args.window_steps}
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{dataset} {step} {mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no result"}
        return json.loads(lines[0][7:])

    flops = {dataset: run_child(dataset, "flops") for dataset in args.datasets}
    for dataset, step, mode, pipeline in plan:
        row = {"dataset": dataset, "step": step, "mode": mode, "pipeline": pipeline,
               **run_child(dataset, step, mode, pipeline)}
        rows.append(row)
        if "error" in row:
            continue
        print(f"{dataset:8s} {step:9s} {mode:8s}{' pipeline' if pipeline else ''}: "
              f"{row['images_per_second']:8.1f} img/s, {1000 * row['seconds_per_step']:8.1f} ms/step, "
              f"peak {row['peak_rss_mb']:.0f} MB", flush=True)

    summary = summarise(rows, preset, {d: methods.config_for(d).real_rf_input for d in args.datasets}, flops)
    result = {"machine": machine, "mixed_precision": args.mixed_precision,
              "command": "python bench/step_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "preset": "full" if args.full else "quick", "models": preset, "model_flops": flops, "rows": rows,
              "summary": summary,
              "wall_seconds": round(time.time() - started, 1)}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(table(summary))
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


def step_flops(cfg, real_rf_input, f_d, f_g):
    """Model FLOPs per image of each step (the module docstring's formulas)."""
    k = cfg["pgd_steps"]
    d_batches = 3 if real_rf_input == "clean" else 2
    return {"pass-d": 3 * f_d, "pass-g": 3 * f_g, "fwd-g": f_g, "plain": 3 * f_d, "pgd-at": 2 * k * f_d + 3 * f_d,
            "robgan": 2 * k * f_d + 3 * d_batches * f_d + f_g + 2 * f_g + 2 * f_d,
            "finetune": 4 * k * f_d + 6 * f_d + f_g}


def summarise(rows, preset, real_rf_inputs, flops):
    """Per dataset and step: ms/step per mode, the default mode against the fastest, the cost
    as a multiple of the limit (in the default mode), the achieved GFLOP/s (default mode) and
    the input-pipeline overhead."""
    timing = {(r["dataset"], r["step"], r["mode"], r["pipeline"]): r["seconds_per_step"]
              for r in rows if "error" not in r}
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        d_pass = timing.get((dataset, "pass-d", "function", False))
        g_pass = timing.get((dataset, "pass-g", "function", False))
        g_fwd = timing.get((dataset, "fwd-g", "function", False))
        need = limits(preset[dataset], real_rf_inputs[dataset])
        model = flops.get(dataset, {})
        work = (step_flops(preset[dataset], real_rf_inputs[dataset], model["d_forward_flops"],
                           model["g_forward_flops"]) if "d_forward_flops" in model else {})
        for step in dict.fromkeys(r["step"] for r in rows if r["dataset"] == dataset):
            modes = {m: timing[(dataset, step, m, False)] for m in MODES if (dataset, step, m, False) in timing}
            if not modes:
                continue
            row = {"dataset": dataset, "step": step, **{f"{m}_ms": round(1000 * t, 1) for m, t in modes.items()}}
            if "function" in modes:
                row["default_vs_fastest"] = round(modes["function"] / min(modes.values()), 3)
            if step in need and d_pass and "function" in modes:
                n_d, n_g, n_gf = need[step]
                limit = n_d * d_pass + n_g * (g_pass or 0) + n_gf * (g_fwd or 0)
                row["limit_ms"] = round(1000 * limit, 1)
                row["cost_vs_limit"] = round(modes["function"] / limit, 3)
            if step in work and "function" in modes:
                batch = preset[dataset]["batch_size"]
                row["mflop_per_image"] = round(work[step] / 1e6, 1)
                row["gflop_per_s"] = round(work[step] * batch / modes["function"] / 1e9, 2)
            piped = timing.get((dataset, step, "function", True))
            if piped and "function" in modes:
                row["pipeline_vs_in_memory"] = round(piped / modes["function"], 3)
            out.append(row)
    return out


def table(summary):
    columns = ("dataset", "step", "eager_ms", "function_ms", "xla_ms", "default_vs_fastest", "limit_ms",
               "cost_vs_limit", "mflop_per_image", "gflop_per_s", "pipeline_vs_in_memory")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in summary]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
