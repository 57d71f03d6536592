"""Pictures of a run: generator sample grids."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robgan_tf.evaluation import generate  # noqa: E402


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
