"""Superseded by :mod:`keras_retina.experiments.paper_study` (issue 15); kept as a forwarding entry point.

The one-seed, 600-step study on the default shapes data (its result stays
in ``docs/focal_ablation.md``) is replaced by the paper study: its own data
with COCO's foreground/background imbalance, runs to convergence, three
seeds, and all of Table 1. This command now runs that study's table 1b
(gamma with the paper's best alpha):

    python -m keras_retina.experiments.focal_ablation --seeds=0,1,2
    # is python -m keras_retina.experiments.paper_study --table=1b --seeds=0,1,2
"""

from __future__ import annotations

from keras_retina.experiments import paper_study


def paper_study_arguments(argv: list[str] | None) -> list[str]:
    """The ``paper_study`` arguments for this command's: ``--table=1b`` unless a table is given.

    Example:
        >>> paper_study_arguments(["--seeds=0,1,2"])
        ['--table=1b', '--seeds=0,1,2']
        >>> paper_study_arguments(["--table=1a"])
        ['--table=1a']
    """
    argv = list(argv or [])
    if not any(a.startswith("--table") for a in argv):
        argv.insert(0, "--table=1b")
    return argv


def main(argv=None) -> None:
    import sys  # noqa: PLC0415

    print("focal_ablation is superseded by keras_retina.experiments.paper_study; running its table 1b.", flush=True)
    paper_study.main(paper_study_arguments(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
