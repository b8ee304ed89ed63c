"""The paper's Table 1 (a-e), Figure 4 and the prior initialisation, with seeds.

Every (setting, seed) of a table is one training run of the ``paper_dense``
experiment (small objects in clutter, about 1 foreground anchor in 1000:
``experiments/paper_dense.py``), run as a subprocess of keras_retina's
command line (``keras-retina --experiment=experiments.paper_dense
--mode=train``, with this interpreter) in
``runs/paper_study/<table>/<setting>_seed<k>/``. A finished run leaves
``study.json`` (its metrics and measurements) and is skipped next time, so a
study runs in pieces, in the background, and is collected at the end. Run
it from the repository root (the data, runs and doc paths are relative to
it)::

    python -m experiments.paper_study --table=1b --seeds=0,1,2
    python -m experiments.paper_study --table=all --seeds=0,1,2    # hours
    python -m experiments.paper_study --collect      # the doc only, from the records; no training

Each call (``--collect`` too) rewrites the generated part of
``docs/paper_study.md`` (the summary of the paper's claims, and per table
the mean ± standard deviation over the finished seeds beside the paper's
numbers) and its figures ``docs/paper_study_*.png``.

Tables (paper: Lin et al. 2017, Table 1; COCO minival AP, ResNet-50 at 600
px except 1d, ResNet-101):

- ``1a``: alpha of alpha-balanced CE (gamma 0);
- ``1b``: gamma with the paper's best alpha for each;
- ``1c``: anchor density, scales x aspect ratios per location;
- ``1c_wide``: 1c on objects of more shapes and sizes (16-92 px, w/h 1/3
  to 3: ``paper_dense.DATASETS["wide"]``), where more anchors can fit them
  better; on 1c's near-square small objects every anchor set fits alike;
- ``1c_wide_strict``: 1c_wide's 1 x 1 and 1 x 3 without low-quality
  matches (``model.allow_low_quality_matches=false``), a test of why 3
  ratios gain nothing on 1c_wide;
- ``1d``: OHEM (no ratio, 1:3; 128 or 256 anchors per image) against FL;
- ``1e``: input size: AP and ms per image of the predict step;
- ``prior``: pi = 0.01 against no prior (bias 0), CE and FL: the loss of
  the first steps and whether training diverges;
- ``fig4``: not a table: the CDF of the normalised loss of foreground and
  background anchors for gamma in {0, 0.5, 1, 2}, from the converged
  gamma = 2 models of table 1b (one per seed).

The modules: ``study_tables`` (the rows and the paper's numbers),
``study_runs`` (training, resuming, the records), ``study_measure`` and
``study_timing`` (what is measured beside AP), ``study_stats``,
``study_plots``, ``study_figure4``, ``study_summary`` and ``study_doc``
(the doc), ``study_records`` (the records kept in git).
"""

from __future__ import annotations

import argparse

from experiments import paper_pretrain, study_doc, study_records, study_runs, study_timing
from experiments.study_tables import BUDGET_STEPS, BUDGETS, STEPS, STEPS_PER_EPOCH, TABLES


def _keep_backbone(records_dir: str) -> None:
    """The study's pre-trained backbone, kept beside the records (:func:`experiments.study_records.archive_backbone`)."""
    kept = study_records.archive_backbone(paper_pretrain.WEIGHTS_PATH, records_dir)
    if kept:
        print(f"Backbone kept: {kept}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="1b", help=f"one of {', '.join(TABLES)}, a comma-separated list, or 'all'")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps per run")
    parser.add_argument("--runs_dir", default=study_runs.RUNS_DIR)
    parser.add_argument("--doc", default=study_doc.DOC_PATH)
    parser.add_argument("--collect", action="store_true", help="only collect finished runs into the doc")
    parser.add_argument("--only", default=None, help="comma-separated setting names: run only these rows")
    parser.add_argument(
        "--budget", action="store_true", help=f"run the budget run ({BUDGET_STEPS} steps, constant LR) and print where AP stops improving"
    )
    parser.add_argument("--budget_data", default="dense", choices=sorted(BUDGETS), help="the data the --budget run trains on")
    parser.add_argument(
        "--time_1e",
        action="store_true",
        help="time every 1e input size side by side (first of --seeds; a quiet machine) into the 1e ms/image column",
    )
    return parser


def budget(data: str, runs_dir: str) -> None:
    """The constant-learning-rate run on ``data``; prints its AP curve and where AP stops improving."""
    table = BUDGETS[data]
    study_runs.run_one(table, table.settings[0], 0, BUDGET_STEPS, runs_dir)
    rows = study_runs.read_train_log(study_runs.run_dir_of(runs_dir, table.key, table.settings[0], 0))
    for row in rows:
        if isinstance(row.get("val_AP"), float):
            print(f"step {(int(row['epoch']) + 1) * STEPS_PER_EPOCH}: AP {row['val_AP']:.3f}")
    print(f"AP stops improving (within 1 point) at step {study_runs.plateau_step(rows)}")


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.time_1e:
        study_timing.time_table_1e(args.runs_dir, int(args.seeds.split(",")[0]))
        study_doc.write_doc([int(s) for s in args.seeds.split(",")], args.runs_dir, args.doc)
        print(f"Wrote {args.doc}")
        return
    if args.budget:
        budget(args.budget_data, args.runs_dir)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    keys = list(TABLES) if args.table == "all" else args.table.split(",")
    unknown = [k for k in keys if k not in TABLES]
    if unknown:
        parser.error(f"--table: unknown {unknown}; known: {', '.join(TABLES)} or all")
    records_dir = study_records.records_dir_for(args.doc)
    if not args.collect:
        for key in keys:
            for seed in seeds:  # seed-major: a table's first seed finishes first
                for setting in TABLES[key].settings:
                    if args.only and setting.name not in args.only.split(","):
                        continue
                    study_runs.run_one(TABLES[key], setting, seed, TABLES[key].steps or args.steps, args.runs_dir, records_dir)
                _keep_backbone(records_dir)
                study_doc.write_doc(seeds, args.runs_dir, args.doc)
    _keep_backbone(records_dir)
    study_doc.write_doc(seeds, args.runs_dir, args.doc)
    print(f"Wrote {args.doc}")


if __name__ == "__main__":
    main()
