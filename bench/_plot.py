"""Scaling curves as PNG charts (matplotlib), shared by the benchmarks.

Each benchmark that measures a figure against a count (workers, branches)
calls L{curves} once with every series it measured; the chart goes to
C{bench/plots/<name>.png} unless C{--plots DIR} says otherwise, and the
README shows the committed ones.
"""

import os

PLOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plots")


def add_plot_option(parser):
    parser.add_argument("--plots", default=PLOTS, metavar="DIR",
                        help="where the PNG charts go (default: bench/plots)")


def curves(path, title, xlabel, ylabel, series, *, logy=False, targets=()):
    """
    Draw C{series} (a mapping of label to a list of C{(x, y)} points) on
    one chart and save it as the PNG C{path}; C{targets} are C{(label, y)}
    horizontal lines (an issue's target).  Returns C{path}.
    """
    import matplotlib

    matplotlib.use("Agg")  # no screen: render to a file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        for label, points in series.items():
            points = sorted((x, y) for x, y in points if y is not None)
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=label)
        for label, y in targets:
            ax.axhline(y, linestyle="--", linewidth=1, color="grey")
            ax.annotate(label, xy=(0.01, y), xycoords=("axes fraction", "data"),
                        va="bottom", fontsize=8, color="grey")
        if logy:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    print(f"  chart: {os.path.relpath(path)}")
    return path
