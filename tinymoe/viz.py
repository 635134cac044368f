"""Plots: where did the tokens go, and how did training go? (matplotlib; each function
returns its Figure, so a notebook shows it and a script can save it.)

- ``loss_curves``: training loss (smoothed) and validation loss of one or more runs
- ``expert_load_heatmap``: each expert's share of the tokens over training steps
- ``load_histogram``: the share of each expert at the end (a balanced layer is flat)
- ``routing_map``: text coloured by the expert each character went to (grey: none)
- ``expert_domain_heatmap``: which experts serve which domain of the multi-domain corpus
- ``decision_regions``: the vowel task's classes and the gate's regions in the (F1, F2) plane
"""

from __future__ import annotations

import matplotlib.pyplot as plt  # with no display, matplotlib draws off-screen (Agg)
import numpy as np


def _smooth(values, window: int = 20) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def loss_curves(runs, title: str = "Training") -> plt.Figure:
    """Training loss (moving average of 20 steps) and validation loss for each run."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs if isinstance(runs, (list, tuple)) else [runs]:
        losses = [h["loss"] for h in run.history]
        smooth = _smooth(losses)
        line, = ax.plot(np.arange(len(smooth)) + (len(losses) - len(smooth)), smooth, label=f"{run.config.name} train")
        if run.evals:
            ax.plot([e["step"] for e in run.evals], [e["val_loss"] for e in run.evals], "o--",
                    color=line.get_color(), label=f"{run.config.name} validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats per character)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def expert_load_heatmap(run, layer: int = 0) -> plt.Figure:
    """Rows: experts; columns: steps; colour: the expert's share of the kept assignments."""
    load = np.array([h["layers"][layer]["load"] for h in run.history]).T
    fig, ax = plt.subplots(figsize=(7, 3))
    image = ax.imshow(load, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
    ax.set(xlabel="step", ylabel="expert", title=f"{run.config.name}: expert load, MoE layer {layer}")
    fig.colorbar(image, ax=ax, label="share of tokens")
    fig.tight_layout()
    return fig


def load_histogram(load, title: str = "Expert load") -> plt.Figure:
    """One bar per expert; the dashed line is perfect balance (1 / E)."""
    load = np.asarray(load, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(np.arange(len(load)), load)
    ax.axhline(1 / len(load), color="k", linestyle="--", label="balanced")
    ax.set(xlabel="expert", ylabel="share of tokens", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def routing_map(text: str, experts, n_experts: int, width: int = 64, title: str = "Routing map") -> plt.Figure:
    """Each character on a grid, coloured by the expert it went to (``experts[i]``, e.g.
    the one with the largest weight); -1 marks a character no expert processed (dropped,
    or picked by no expert under expert choice), drawn in grey."""
    experts = np.asarray(experts)
    rows = (len(text) + width - 1) // width
    grid = np.full((rows, width), np.nan)  # NaN: the empty cells after the text, left blank
    grid.flat[: len(experts)] = experts
    fig, ax = plt.subplots(figsize=(max(4.0, width / 5) + 1.5, rows / 2.5 + 1))  # + room for the legend
    # -1 lies below vmin, so it takes the colormap's "under" colour, which no expert has
    cmap = plt.get_cmap("tab10" if n_experts <= 10 else "tab20", n_experts).with_extremes(under="lightgrey")
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=n_experts - 0.5, aspect="auto")
    for i, ch in enumerate(text):
        ax.text(i % width, i // width, ch, ha="center", va="center", fontsize=7, family="monospace")
    ax.set_axis_off()
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(e)) for e in range(n_experts)]
    labels = [f"expert {e}" for e in range(n_experts)]
    if (experts == -1).any():
        handles.append(plt.Rectangle((0, 0), 1, 1, color=cmap.get_under()))
        labels.append("no expert")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1, 1), fontsize=7)
    fig.tight_layout()
    return fig


def expert_domain_heatmap(table, domain_names, title: str = "Which experts serve which domain") -> plt.Figure:
    """``table`` (domains, experts): each domain's share of assignments per expert (rows add up
    to 1; see ``train.expert_by_domain``)."""
    table = np.asarray(table, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 2.5))
    image = ax.imshow(table, cmap="magma", vmin=0, aspect="auto")
    ax.set_yticks(range(len(domain_names)), domain_names)
    ax.set(xlabel="expert", title=title)
    for (i, j), value in np.ndenumerate(table):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w" if value < 0.5 else "k")
    fig.colorbar(image, ax=ax, label="share of the domain's assignments")
    fig.tight_layout()
    return fig


def decision_regions(predict, x, labels, class_names, gate=None, title: str = "Vowel classes") -> plt.Figure:
    """Left: predicted class over the (F1, F2) plane with the data on top. Right (when
    ``gate`` is given): which expert the gate favours where."""
    x, labels = np.asarray(x), np.asarray(labels)
    lo, hi = x.min(axis=0) - 0.1, x.max(axis=0) + 0.1
    f1, f2 = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = np.stack([f1.ravel(), f2.ravel()], axis=1).astype(np.float32)
    panels = [("predicted class", predict(grid))] + ([("gate's favourite expert", gate(grid))] if gate else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels, strict=True):
        ax.contourf(f1, f2, values.reshape(f1.shape), levels=np.arange(values.max() + 2) - 0.5, cmap="Pastel1")
        for c, cname in enumerate(class_names):
            ax.scatter(*x[labels == c].T, s=10, label=cname)
        ax.set(xlabel="F1 (kHz)", ylabel="F2 (kHz)", title=f"{title}: {name}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
