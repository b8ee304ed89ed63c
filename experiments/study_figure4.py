"""The paper's Figure 4: the cumulative distribution of the normalised loss of foreground and background anchors.

Drawn from the converged gamma = 2 models of table 1b (one per seed): for
each gamma the per-anchor focal loss of each group is sorted, and its
cumulative sum over the total is plotted against the fraction of anchors.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

import keras_retina as kr
from experiments import study_measure, study_runs, study_stats
from experiments.study_tables import TABLES, setting_named

#: Figure 4: the gammas, and the run of table 1b whose converged model it uses.
FIG4_GAMMAS = (0.0, 0.5, 1.0, 2.0)
FIG4_RUN = ("1b", "fl_g2.0_a0.25")
FIG4_TITLE = "Figure 4: CDF of the normalised loss"
FIG4_PATH = os.path.join("docs", "paper_study_fig4.png")
#: The line under the figure starts so (:func:`figure4`); the summary reads the shares back from it.
LINE_START = "Share of the hardest anchors that holds half of the loss"


def fig4_run_dirs(runs_dir: str = study_runs.RUNS_DIR, seeds: Sequence[int] = (0, 1, 2)) -> list[str]:
    """The finished runs whose models Figure 4 uses: table 1b's gamma = 2, one per seed of ``seeds``."""
    table, name = FIG4_RUN
    setting = setting_named(TABLES[table], name)
    found = [study_runs.run_dir_of(runs_dir, table, setting, seed) for seed in seeds]
    return [d for d in found if study_runs.load_result(d) is not None]


def anchor_losses(run_dir: str, max_images: int = 100, gammas: Sequence[float] = FIG4_GAMMAS) -> dict:
    """Figure 4's data: each anchor's loss under every gamma of ``gammas``, from ``run_dir``'s model.

    Over the first ``max_images`` validation images of the run's data, the
    per-anchor focal loss (summed over classes, alpha left out: it is a
    constant within each group) of the trained model
    (``checkpoints/latest.keras``), split into foreground and background
    anchors (ignored anchors left out).

    Returns:
        ``{"images": n, gamma: {"foreground": sorted losses (N_fg,),
        "background": sorted losses (N_bg,)}}``, losses in nats.
    """
    model = study_measure.load_model(run_dir)
    config = study_measure.read_config(run_dir)
    data = kr.data.RunData(config.data, seed=0)
    losses = {g: {"foreground": [], "background": []} for g in gammas}
    seen = 0
    for images, y in data.pipeline("val"):
        targets = model.label_anchors(tuple(images.shape[1:3]), y)
        logits = model(images, training=False)["cls_logits"]
        foreground = np.asarray(targets["foreground"])
        background = (np.asarray(targets["cls_weights"]) > 0) & ~foreground
        one_hot = np.eye(model.num_classes, dtype=np.float32)[np.maximum(np.asarray(targets["cls_targets"]), 0)] * foreground[..., None]
        for gamma in gammas:
            per_anchor = np.asarray(kr.focal_loss(one_hot, logits, alpha=None, gamma=gamma))
            losses[gamma]["foreground"].append(per_anchor[foreground])
            losses[gamma]["background"].append(per_anchor[background])
        seen += images.shape[0]
        if seen >= max_images:
            break
    found = {gamma: {group: np.sort(np.concatenate(parts)) for group, parts in groups.items()} for gamma, groups in losses.items()}
    found["images"] = seen
    return found


def figure4(run_dirs: Sequence[str], path: str = FIG4_PATH, max_images: int = 100) -> tuple[str, str]:
    """The paper's Figure 4 from the trained models of ``run_dirs`` (one per seed); returns ``(path, line)``.

    For each gamma the losses of each group (:func:`anchor_losses`) are
    sorted and their cumulative sum over the total is plotted against the
    fraction of anchors: the mean over the models as a line, their range as
    a band. ``line`` says, per gamma and group, which share of the hardest
    anchors holds half of the loss (mean ± std over the models), the
    paper's own reading of the figure (about 20 % of the hardest
    foreground anchors hold half of their loss; at gamma 2 nearly all the
    background loss sits in a tiny share of anchors).
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    per_run = [anchor_losses(d, max_images) for d in run_dirs]
    grid = np.linspace(0.0, 1.0, 1001)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    shares = {}
    for axis, group in zip(axes, ("foreground", "background")):
        for gamma in FIG4_GAMMAS:
            curves = []
            for found in per_run:
                values = found[gamma][group]
                cdf = np.cumsum(values) / max(values.sum(), 1e-12)
                curves.append(np.interp(grid, np.linspace(0, 1, len(values)), cdf))
                shares.setdefault((gamma, group), []).append(study_stats.hardest_share_for_half(values))
            curves = np.stack(curves)
            (drawn,) = axis.plot(grid, curves.mean(0), label=f"gamma = {gamma:g}")
            axis.fill_between(grid, curves.min(0), curves.max(0), color=drawn.get_color(), alpha=0.25, linewidth=0)
        counts = sorted({len(found[FIG4_GAMMAS[0]][group]) for found in per_run})
        count = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}"
        axis.set_title(f"{group} anchors ({count} per model, {per_run[0]['images']} val images)", fontsize=9)
        axis.set_xlabel(f"fraction of {group} anchors")
        axis.set_ylabel("cumulative normalised loss")
        axis.legend(fontsize=8, loc="upper left")
    figure.suptitle(
        f"Figure 4 on our data: the converged gamma = 2 models of table 1b, {len(per_run)} seed(s) (line: mean, band: range)", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    cells = []
    for group in ("foreground", "background"):
        parts = [f"gamma {gamma:g}: {study_stats.percent_2g(shares[(gamma, group)])}" for gamma in FIG4_GAMMAS]
        cells.append(f"{group}: " + ", ".join(parts))
    line = (
        f"{LINE_START} (mean ± std over {len(per_run)} model(s), "
        f"{per_run[0]['images']} validation images each): " + "; ".join(cells) + "."
    )
    return path, line


def shares_from_line(line: str) -> dict[str, dict[float, str]]:
    """The shares :func:`figure4`'s line gives, as written: ``{group: {gamma: "12 ± 1 %"}}``.

    Example:
        >>> shares_from_line(LINE_START + " (...): foreground: gamma 0: 12 ± 1 %, gamma 2: 6.1 ± 0.5 %; "
        ...                  "background: gamma 0: 4.3 ± 0.8 %, gamma 2: 0.0045 ± 0.0004 %.")
        {'foreground': {0.0: '12 ± 1 %', 2.0: '6.1 ± 0.5 %'}, 'background': {0.0: '4.3 ± 0.8 %', 2.0: '0.0045 ± 0.0004 %'}}
    """
    found = {}
    for cell in line.split("): ", 1)[-1].rstrip(".").split("; "):
        group, _, parts = cell.partition(": ")
        found[group] = {float(gamma): share for gamma, share in (part[len("gamma ") :].split(": ", 1) for part in parts.split(", "))}
    return found
