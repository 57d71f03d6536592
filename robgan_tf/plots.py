"""Pictures: generator sample grids, robustness curves and adversarial examples."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robgan_tf.quality import generate  # noqa: E402


def sample_grid(generator, class_names, path, per_class=10, seed=1234, title=None):
    """Saves a grid of G's samples, one row per class (fixed noise, so epochs compare)."""
    labels = np.repeat(np.arange(len(class_names)), per_class)
    images = generate(generator, labels, seed)
    rows = len(class_names)
    fig, axes = plt.subplots(rows, per_class, figsize=(per_class * 0.9 + 1.2, rows * 0.9 + 0.4),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        image = images[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i % per_class == 0:
            ax.set_ylabel(class_names[i // per_class], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def robustness_curve(robust_accuracy, clean_accuracy, path, title=None):
    """Accuracy against eps, one line per attack (clean accuracy at eps = 0)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for attack, by_eps in robust_accuracy.items():
        points = sorted((float(e), a) for e, a in by_eps.items())
        if attack != "autoattack" and len(points) < 2 and "autoattack" in robust_accuracy:
            continue  # a single point under the composition's line says nothing
        eps, acc = zip(*[(0.0, clean_accuracy)] + points)
        ax.plot(eps, 100 * np.array(acc), marker="o", label=attack)
    ax.set_xlabel("eps (L-inf, pixels in [0, 1])")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def adversarial_examples(x, x_adv, y, clean_pred, adv_pred, class_names, path, n=8, title=None):
    """Columns of examples: clean image, adversarial image, perturbation; predicted labels above."""
    n = min(n, len(x))
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n + 0.8, 4.4), squeeze=False)
    for i in range(n):
        delta = x_adv[i] - x[i]
        scale = max(np.abs(delta).max(), 1e-12)
        rows = [(x[i], f"{class_names[clean_pred[i]]}"), (x_adv[i], f"{class_names[adv_pred[i]]}"),
                (0.5 + 0.5 * delta / scale, f"±{scale:.3g}")]
        for r, (image, label) in enumerate(rows):
            ax = axes[r, i]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            wrong = r == 1 and adv_pred[i] != y[i]
            ax.set_title(label, fontsize=8, color="red" if wrong else "black")
    for r, name in enumerate(("clean", "adversarial", "perturbation")):
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def training_curves(rows, path, best_epoch=None):
    """Per epoch: the training batches' attacked accuracy against clean and PGD-10 accuracy on the
    validation split (rows of metrics.csv); a gap that widens while validation falls is robust
    overfitting (Rice et al. 2020). `best_epoch`, the epoch kept as the best, is marked."""
    rows = [r for r in rows if r.get("val_pgd10_acc")]
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("adv_acc", "training batches, attacked"), ("val_clean_acc", "validation, clean"),
                       ("val_pgd10_acc", "validation, PGD-10")):
        values = [float(r[key]) if r.get(key) else np.nan for r in rows]
        ax.plot(epochs, values, marker="." if len(rows) < 40 else None, label=label)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
