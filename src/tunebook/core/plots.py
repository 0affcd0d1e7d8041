"""Matplotlib figures for the notebooks; each is also saved as a PNG in the run folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    """Lay out the figure and save it as a PNG when a path is given."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def loss_curve(log_history: list[dict], path: str | Path | None = None) -> Figure:
    """Training and validation loss against step, from the Trainer's log history."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    val = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if val:
        ax.plot(*zip(*val), label="validation loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per answer token)")
    ax.set_title("Training curve")
    ax.legend()
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def confusion(metrics: dict, title: str, path: str | Path | None = None) -> Figure:
    """Confusion matrix heat map (rows: truth, columns: prediction)."""
    labels = metrics["confusion_matrix"]["labels"]
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    return _finish(fig, path)


def headline_bars(scores: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The headline metrics that are rates (floats in 0-1) for every model, ready for ``compare_bars``."""
    keys = next(iter(scores.values()))["headline_keys"]
    shown = [k for k in keys if all(isinstance(s.get(k), float) and 0 <= s[k] <= 1 for s in scores.values())]
    return {name: {k: s[k] for k in shown} for name, s in scores.items()}


def compare_bars(figures: dict[str, dict[str, float]], title: str, path: str | Path | None = None) -> Figure:
    """Grouped bars of the same metrics for several models, e.g. baseline vs tuned."""
    models = list(figures)
    names = list(next(iter(figures.values())))
    x = np.arange(len(names))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, model in enumerate(models):
        ax.bar(x + i * width, [figures[model][n] for n in names], width, label=model)
    ax.set_xticks(x + width * (len(models) - 1) / 2, names)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return _finish(fig, path)


def class_balance(table, path: str | Path | None = None) -> Figure:
    """Examples per label (or tool), with the hard cases shaded."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [str(n) for n in table.index]
    ax.bar(names, table["examples"], label="all examples", color="#9ecae1")
    ax.bar(names, table["hard"], label="tagged hard", color="#3182bd")
    ax.set_ylabel("examples")
    ax.set_title("Balance and hard-case coverage")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    return _finish(fig, path)


def length_histogram(lengths, max_length: int, path: str | Path | None = None) -> Figure:
    """Histogram of prompt and answer token counts, with the MAX_LENGTH cut marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lengths["total_tokens"], bins=30, alpha=0.7, label="prompt + answer")
    ax.hist(lengths["answer_tokens"], bins=30, alpha=0.7, label="answer")
    ax.axvline(max_length, color="red", linestyle="--", label=f"MAX_LENGTH {max_length}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("examples")
    ax.set_title("Lengths")
    ax.legend()
    return _finish(fig, path)


def method_tradeoff(table, path: str | Path | None = None) -> Figure:
    """Peak memory, seconds per step and validation loss for each training method, side by side."""
    columns = [
        ("peak_memory_mb", "peak memory (MB)"),
        ("seconds_per_step", "seconds per step"),
        ("val_loss_after", "validation loss after"),
    ]
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2))
    for ax, (column, title) in zip(axes, columns):
        ax.bar(table.index.astype(str), table[column], color="tab:blue")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path)


def reliability_diagram(table, path: str | Path | None = None) -> Figure:
    """Accuracy against mean confidence per confidence bin, with the diagonal of perfect calibration."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
    ax.scatter(
        table["confidence"], table["accuracy"], s=20 + 4 * table["examples"], label="tuned model (size: examples)"
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (test split)")
    ax.legend(loc="upper left")
    return _finish(fig, path)


def drift_panels(reference, window, choices: list[str] | None, path: str | Path | None = None) -> Figure:
    """Reference against the monitored window: text lengths, answer shares and confidences (where measured).

    ``reference`` and ``window`` are frames with columns length, and where the task has them answer and confidence.
    """
    panels = ["length"] + [c for c in ("answer", "confidence") if c in reference and c in window]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "answer":
            names = choices or sorted(set(reference[panel]) | set(window[panel]))
            x = np.arange(len(names))
            for offset, (label, frame) in zip((-0.2, 0.2), (("reference", reference), ("window", window))):
                shares = frame[panel].value_counts(normalize=True).reindex(names, fill_value=0)
                ax.bar(x + offset, shares.to_numpy(), width=0.4, label=label)
            ax.set_xticks(x, names, rotation=30, ha="right")
            ax.set_ylabel("share of answers")
        else:
            bins = np.linspace(0, 1, 21) if panel == "confidence" else 20
            for label, frame in (("reference", reference), ("window", window)):
                ax.hist(frame[panel].astype(float), bins=bins, density=True, alpha=0.5, label=label)
            ax.set_xlabel("confidence of the answer" if panel == "confidence" else "text length (characters)")
            ax.set_ylabel("density")
        ax.legend()
    return _finish(fig, path)
