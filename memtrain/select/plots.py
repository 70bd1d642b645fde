"""Plots for `compare --plot` and `sweep --plot` (matplotlib, Agg backend, imported here only).

matplotlib is an optional extra (`pip install memtrain[plot]`); without it,
`--plot` is a one-line error and nothing else changes.
"""

from __future__ import annotations

from memtrain.errors import ConfigError
from memtrain.memory.plan import CATEGORIES


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        raise ConfigError("plot: matplotlib is not installed; pip install 'memtrain[plot]' "
                         "(or matplotlib), or leave out --plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def compare_plot(rep: dict, path, *, title: str = "") -> None:
    """Validation-loss curves of every optimizer, and their planned memory by category
    as stacked bars (with the measured peak as a marker)."""
    plt = _pyplot()
    rows = rep["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1.2, 1]})
    colours = plt.get_cmap("tab20" if len(rows) > 10 else "tab10")
    for n, r in enumerate(rows):
        h = [x for x in r["history"] if x.get("val_loss") is not None]
        ax1.plot([x["epoch"] for x in h], [x["val_loss"] for x in h], marker=".", color=colours(n),
                 linestyle=("-", "--", ":")[n % 3], label=f"{r['rank']}. {r['optimizer']}")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation loss")
    ax1.set_yscale("log")
    ax1.set_title("validation loss (ranked by its best value)")
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax1.grid(alpha=0.3)
    names = [r["optimizer"] for r in rows]
    bottom = [0.0] * len(rows)
    kib = 1024.0
    for cat in CATEGORIES:
        vals = [r["planned_by_category"].get(cat, 0) / kib for r in rows]
        if any(vals):
            ax2.bar(range(len(rows)), vals, bottom=bottom, label=cat)
            bottom = [b + v for b, v in zip(bottom, vals)]
    peaks = [(i, r["measured_peak_bytes"] / kib) for i, r in enumerate(rows) if r.get("measured_peak_bytes")]
    if peaks:
        ax2.scatter([i for i, _ in peaks], [p for _, p in peaks], color="black", marker="_", s=400, zorder=3,
                    label="measured peak")
    ax2.set_ylabel("KiB")
    ax2.set_title("planned memory by category")
    ax2.set_xticks(range(len(rows)))
    ax2.set_xticklabels(names, rotation=40, ha="right")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_plot(rep: dict, path, *, log_scale=()) -> None:
    """The validation metric of every finished trial against each hyper-parameter; the
    best trial in red."""
    plt = _pyplot()
    names = rep["params"]
    rows = [r for r in rep["rows"] if r.get("score") is not None]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        xs = [r["params"].get(name) for r in rows]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if numeric:
            pos = xs
        else:
            labels = sorted({_label(x) for x in xs})
            pos = [labels.index(_label(x)) for x in xs]
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, fontsize=8)
        ys = [r["score"] for r in rows]
        ax.scatter(pos, ys, color="tab:blue", alpha=0.7)
        best = [i for i, r in enumerate(rows) if r["trial"] == rep["best"]]
        if best:
            ax.scatter([pos[best[0]]], [ys[best[0]]], color="red", s=90, zorder=3, label="best")
            ax.legend(fontsize=8)
        if numeric and name in log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(rep["metric"])
        ax.grid(alpha=0.3)
    fig.suptitle(f"sweep {rep['sweep']}: {rep['metric']} (validation) per hyper-parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(x) -> str:
    return "-".join(map(str, x)) if isinstance(x, list) else str(x)
