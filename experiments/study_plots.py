"""The study's figures: each table's AP beside the paper's, and table 1e's accuracy against speed.

Figure 4 has its own module (:mod:`experiments.study_figure4`): it is
measured on trained models, not drawn from the records.
"""

from __future__ import annotations

import statistics

from experiments.study_tables import PAPER_MS, PAPER_SIZE, Table


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_table(table: Table, rows: list[dict], path: str) -> str | None:
    """AP (mean, seeds as dots) against the table's x, with the paper's AP on a second axis; ``None`` if no results."""
    if not any(row["results"] for row in rows):
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    xs = list(range(len(rows))) if table.categorical else [row["setting"].x for row in rows]
    means = []
    for x, row in zip(xs, rows):
        aps = [100 * r["AP"] for r in row["results"]]
        axis.scatter([x] * len(aps), aps, color="tab:blue", alpha=0.4, s=14)
        means.append(statistics.mean(aps) if aps else float("nan"))
    axis.plot(xs, means, "o-", color="tab:blue", label="this library, shapes in clutter")
    axis.set_ylabel("AP (%) on our validation split")
    if any(row["setting"].paper for row in rows):
        twin = axis.twinx()
        twin.plot(xs, [row["setting"].paper[0] if row["setting"].paper else float("nan") for row in rows], "s--", color="tab:orange", label="paper, COCO (right axis)")
        twin.set_ylabel("paper COCO AP (%)")
    if table.categorical:  # label every tick, also where the x values happen to be 0, 1, 2, ...
        axis.set_xticks(xs, [row["setting"].label for row in rows], rotation=20, fontsize=7, ha="right")
    axis.set_xlabel(table.x_name)
    axis.set_title(table.title, fontsize=9)
    figure.legend(loc="lower center", ncol=2, fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_speed_accuracy(rows: list[dict], timing: dict, path: str) -> str | None:
    """Table 1e as the paper's speed/accuracy trade-off: AP against ms/image, ours (left) and the paper's (right).

    ``rows`` is table 1e's :func:`experiments.study_runs.collect` output,
    ``timing`` :func:`experiments.study_timing.read_timing`'s record. Returns
    ``path``, or ``None`` if no size has both an AP and a time.
    """
    points = []
    for row in rows:
        size = int(row["setting"].x)
        t = timing["sizes"].get(str(size))
        if row["results"] and t:
            aps = [100 * r["AP"] for r in row["results"]]
            points.append((size, t["median_ms"], statistics.mean(aps), statistics.stdev(aps) if len(aps) > 1 else 0.0, row["setting"].paper))
    if not points:
        return None
    plt = _pyplot()
    figure, (ours, paper) = plt.subplots(1, 2, figsize=(9, 3.8))
    ours.errorbar([p[1] for p in points], [p[2] for p in points], yerr=[p[3] for p in points], fmt="o-", color="tab:blue", capsize=3)
    for size, ms, ap, _, _ in points:
        ours.annotate(f"{size} px", (ms, ap), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ours.set_xlabel("ms/image, this CPU (side by side)")
    ours.set_ylabel("AP (%), mean ± std over seeds")
    ours.set_title("this library: shapes in clutter", fontsize=9)
    known = [p for p in points if p[4] and p[0] in PAPER_MS and p[0] in PAPER_SIZE]
    paper.plot([PAPER_MS[p[0]] for p in known], [p[4][0] for p in known], "s--", color="tab:orange")
    for size, _, _, _, ref in known:
        paper.annotate(f"{PAPER_SIZE[size]} px", (PAPER_MS[size], ref[0]), textcoords="offset points", xytext=(5, -10), fontsize=8)
    for axis in (ours, paper):
        axis.margins(x=0.15, y=0.1)  # room for the size labels
    paper.set_xlabel("ms/image, Nvidia M40 GPU")
    paper.set_ylabel("COCO AP (%)")
    paper.set_title("paper, ResNet-50 (Table 1e)", fontsize=9)
    figure.suptitle("Table 1e: accuracy against speed, input size varied", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
