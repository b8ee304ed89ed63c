"""The paper's Table 1a/1b study on the shapes data: alpha-balanced CE against focal loss.

Trains the default ``shapes`` model once per (setting, seed) with a fixed
budget, evaluates each with COCO AP, and writes ``docs/focal_ablation.md``
(a table) and ``docs/focal_ablation.png`` (AP against gamma). The alpha of
each gamma is the paper's best pairing from Table 1b.

    python -m keras_retina.experiments.focal_ablation                 # 1 seed, 600 steps each
    python -m keras_retina.experiments.focal_ablation --seeds=0,1,2 --steps=1200

Each run is a ``python -m keras_retina.cli`` subprocess (``--mode=train`` then
``--mode=evaluate``) in ``runs/focal_ablation/<setting>_seed<k>``, so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


#: (label, alpha, gamma): Table 1a's alpha-balanced CE and Table 1b's best alpha per gamma.
SETTINGS = (
    ("CE (alpha-balanced)", 0.75, 0.0),
    ("FL gamma=0.5", 0.5, 0.5),
    ("FL gamma=1", 0.25, 1.0),
    ("FL gamma=2", 0.25, 2.0),
    ("FL gamma=5", 0.25, 5.0),
)
#: The paper's COCO AP for the same pairs (Table 1a/1b, ResNet-50, 600 px).
PAPER_AP = {0.0: 31.1, 0.5: 32.9, 1.0: 33.7, 2.0: 34.0, 5.0: 32.2}


def run_one(alpha: float, gamma: float, seed: int, steps: int, steps_per_epoch: int, model_dir: str) -> dict:
    """Trains and evaluates one setting; returns its metrics (cached in ``model_dir/metrics.json``)."""
    metrics_path = os.path.join(model_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            return json.load(f)
    common = [
        sys.executable,
        "-m",
        "keras_retina.cli",
        f"--model_dir={model_dir}",
        f"--seed={seed}",
        f"--override=model.focal_alpha={alpha}",
        f"--override=model.focal_gamma={gamma}",
        "--override=train.tensorboard=false",
    ]
    epochs = max(steps // steps_per_epoch, 1)
    train = common + [
        "--mode=train",
        f"--epochs={epochs}",
        f"--steps_per_epoch={steps_per_epoch}",
        f"--override=train.eval_every_epochs={epochs}",
    ]
    subprocess.run(train, check=True)
    subprocess.run(common + ["--mode=evaluate"], check=True)
    with open(metrics_path) as f:
        return json.load(f)


def write_report(rows: list[dict], output_dir: str, steps: int, seeds: list[int]) -> tuple[str, str]:
    """Writes the markdown table and the PNG plot; returns their paths."""
    import matplotlib  # noqa: PLC0415 (only the report needs it: the `experiments` extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    os.makedirs(output_dir, exist_ok=True)
    table = [
        f"# Focal loss ablation on the shapes data ({steps} steps, seeds {', '.join(map(str, seeds))})",
        "",
        "Command: `python -m keras_retina.experiments.focal_ablation "
        f"--steps={steps} --seeds={','.join(map(str, seeds))}`; model and data as `keras_retina/experiments/shapes.py`.",
        "",
        "| setting | alpha | gamma | AP (mean) | AP per seed | AP50 | AP75 | paper COCO AP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        aps = row["AP"]
        table.append(
            f"| {row['label']} | {row['alpha']} | {row['gamma']} | {sum(aps) / len(aps):.3f} | "
            f"{', '.join(f'{a:.3f}' for a in aps)} | {sum(row['AP50']) / len(aps):.3f} | "
            f"{sum(row['AP75']) / len(aps):.3f} | {PAPER_AP[row['gamma']]} |"
        )
    md_path = os.path.join(output_dir, "focal_ablation.md")
    with open(md_path, "w") as f:
        f.write("\n".join(table) + "\n")

    figure, axis = plt.subplots(figsize=(6, 4))
    gammas = [row["gamma"] for row in rows]
    means = [sum(row["AP"]) / len(row["AP"]) for row in rows]
    for row in rows:
        axis.scatter([row["gamma"]] * len(row["AP"]), row["AP"], color="tab:blue", alpha=0.4, s=12)
    axis.plot(gammas, means, "o-", color="tab:blue", label="shapes, this library")
    axis.set_xlabel("gamma (alpha: the paper's best pairing)")
    axis.set_ylabel("COCO AP on shapes val")
    twin = axis.twinx()
    twin.plot(gammas, [PAPER_AP[g] for g in gammas], "s--", color="tab:orange", label="paper, COCO (right axis)")
    twin.set_ylabel("paper COCO AP")
    figure.legend(loc="lower center", ncol=2, fontsize=8)
    axis.set_title(f"Focal loss ablation ({steps} steps)")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    png_path = os.path.join(output_dir, "focal_ablation.png")
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return md_path, png_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per run")
    parser.add_argument("--steps_per_epoch", type=int, default=100)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--runs_dir", default=os.path.join("runs", "focal_ablation"))
    parser.add_argument("--output_dir", default="docs")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for label, alpha, gamma in SETTINGS:
        row = {"label": label, "alpha": alpha, "gamma": gamma, "AP": [], "AP50": [], "AP75": []}
        for seed in seeds:
            name = f"alpha{alpha}_gamma{gamma}_seed{seed}"
            metrics = run_one(alpha, gamma, seed, args.steps, args.steps_per_epoch, os.path.join(args.runs_dir, name))
            for key in ("AP", "AP50", "AP75"):
                row[key].append(metrics[key])
            print(f"{label} seed {seed}: AP {metrics['AP']:.3f}", flush=True)
        rows.append(row)
    md_path, png_path = write_report(rows, args.output_dir, args.steps, seeds)
    print(f"Wrote {md_path} and {png_path}")


if __name__ == "__main__":
    main()
