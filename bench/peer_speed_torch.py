"""The official Rob-GAN (PyTorch) CIFAR-10 training step, timed on the CPU: run by
bench/peer_speed.py with a Python that has torch, never imported by robgan-tf.

It imports the official model classes, attack and loss from a local clone of
github.com/xuanqing94/RobGAN (--official; nothing is copied from it) and repeats its train.py's
CIFAR-10 step without CUDA, DataParallel or printing: D = ResNetAC(ch=64, bn=True) (128 channels,
4 residual blocks), G = ResNetGenerator(ch=64, dim_z=128, bottom_width=4), Adam 2e-4 (0, 0.9),
batch 64, PGD-5 (step 0.0078, eps 0.03125 on [-1, 1] images), --our_loss, --iter_d 5. Units:
  pgd5    one D iteration without G: the attack and D's update on the attacked reals
  robgan  the official block, one G update then 5 D iterations (attack, reals, fresh fakes),
          reported per D iteration (block / 5)
Prints one line `RESULT {json}`: seconds per D iteration (median of the timed windows), the
parameters and the forward FLOPs per image of D and G (2 x the multiply-adds of every conv and
linear layer, counted by forward hooks), and the torch version.
"""

import argparse
import json
import statistics
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="a local clone of xuanqing94/RobGAN")
    p.add_argument("--data", required=True, help="cifar10_train.npz (x uint8 NHWC, y uint8)")
    p.add_argument("--units", nargs="+", default=["pgd5", "robgan"], choices=("pgd5", "robgan"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed units first")
    p.add_argument("--windows", type=int, default=3, help="timed windows of one unit (median reported)")
    args = p.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, args.official)
    from dis_models.resnet_32 import ResNetAC
    from gen_models.resnet_32 import ResNetGenerator
    from miscs.loss import loss_nll
    from miscs.pgd import attack_Linf_PGD

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    batch, z_dim, classes, eps, steps = 64, 128, 10, 0.03125, 5
    dis = ResNetAC(ch=64, n_classes=classes, bn=True)
    gen = ResNetGenerator(ch=64, dim_z=z_dim, bottom_width=4, n_classes=classes)
    opt_d = torch.optim.Adam(dis.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.0, 0.9))
    with np.load(args.data) as f:
        x_real = torch.from_numpy(f["x"][:batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        y_real = torch.from_numpy(f["y"][:batch].astype(np.int64))
    ones, zeros = torch.ones(batch), torch.zeros(batch)

    def fakes(n=batch):
        return torch.randn(n, z_dim), torch.randint(0, classes, (n,))

    def g_update():
        # train.py: fresh fakes, not attacked, through D towards "real" and their labels
        gen.zero_grad()
        z, y = fakes()
        d_bin, d_multi = dis(gen(z, y=y))
        loss_nll(d_bin, ones, d_multi, y, lam=0.5).backward()
        opt_g.step()

    def d_iteration(with_fakes):
        # train.py: PGD on the reals, then D's loss on them and (with G) on fresh fakes
        dis.zero_grad()
        x_adv = attack_Linf_PGD(x_real, ones, y_real, dis, loss_nll, steps, eps)
        d_bin, d_multi = dis(x_adv)
        loss = loss_nll(d_bin, ones, d_multi, y_real, lam=0.5)
        if with_fakes:
            z, y = fakes()
            with torch.no_grad():
                x_fake = gen(z, y=y)
            f_bin, f_multi = dis(x_fake.detach())
            loss = loss + loss_nll(f_bin, zeros, f_multi, y, lam=1)
        loss.backward()
        opt_d.step()

    def block():
        g_update()
        for _ in range(5):
            d_iteration(True)

    units = {"pgd5": (lambda: d_iteration(False), 1), "robgan": (block, 5)}
    result = {"torch": torch.__version__, "threads": args.threads,
              "d_params": sum(p.numel() for p in dis.parameters()),
              "g_params": sum(p.numel() for p in gen.parameters()),
              "d_forward_flops": forward_flops(dis, lambda: dis(x_real[:1])),
              "g_forward_flops": forward_flops(gen, lambda: gen(*fakes(1)))}
    for name in args.units:
        run, d_iterations = units[name]
        for _ in range(args.warmup):
            run()
        windows = []
        for _ in range(args.windows):
            started = time.perf_counter()
            run()
            windows.append((time.perf_counter() - started) / d_iterations)
        result[name] = {"seconds_per_d_iteration": statistics.median(windows), "windows": windows}
        print(f"official {name}: {result[name]['seconds_per_d_iteration']:.2f} s per D iteration", file=sys.stderr,
              flush=True)
    print("RESULT " + json.dumps(result))


def forward_flops(model, forward):
    """2 x the multiply-adds of every Conv2d and Linear layer in one forward pass of one image."""
    import torch

    total = [0]

    def count(layer, inputs, output):
        if isinstance(layer, torch.nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            per_output = layer.in_features
        total[0] += 2 * output.numel() * per_output

    counted = (torch.nn.Conv2d, torch.nn.Linear)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, counted)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        forward()
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return total[0]


if __name__ == "__main__":
    main()
