"""The study's tables: each row's config overrides, the paper's numbers, and the claims the summary checks.

A table (:class:`Table`) is a set of rows (:class:`Setting`), each one
training run per seed of the ``paper_dense`` experiment with a few
``--override`` strings; :data:`TABLES` holds the paper's Table 1 (a-e), two
follow-ups of 1c on wider objects, and the prior. :data:`BUDGETS` are the
constant-learning-rate runs that set the number of training steps.

The paper's numbers are Lin et al. 2017, Table 1 (AP, AP50, AP75 in percent),
checked against the text of arXiv:1708.02002v2.
"""

from __future__ import annotations

import dataclasses

from experiments import paper_dense

#: Training steps of every run (batch 8): twice the 2400 steps after which the budget run
#: (pre-trained backbone, constant learning rate) stopped improving (docs/paper_study.md, "Budget").
STEPS = 4800
STEPS_PER_EPOCH = 100
#: Study runs evaluate every EVAL_EVERY_EPOCHS epochs (1000 steps), so that each run's
#: study.json says where its own AP stopped improving.
EVAL_EVERY_EPOCHS = 10
#: The prior table logs the loss every PRIOR_LOG_STEPS steps (its epochs are this short, and
#: each epoch saves a checkpoint), so its runs are PRIOR_STEPS long: the question is the early
#: training; their AP is not converged.
PRIOR_LOG_STEPS = 10
PRIOR_STEPS = 1000
#: Steps of the budget run (``--budget``).
BUDGET_STEPS = 3000


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of a table.

    Attributes:
        name: directory-safe id (``runs/paper_study/<table>/<name>_seed<k>``).
        label: the row's label in the table.
        overrides: ``section.field=value`` strings for ``--override``.
        paper: the paper's ``(AP, AP50, AP75)`` in percent, or ``None``.
        x: the row's value on the x axis of the table's figure (gamma, alpha, ...).
    """

    name: str
    label: str
    overrides: tuple[str, ...]
    paper: tuple[float, float, float] | None
    x: float


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the paper's claims about a table, as a pair of its rows: ``better`` reaches a higher AP than ``worse``.

    Attributes:
        text: the claim in words, for the summary.
        better: the setting name of the row the paper finds better.
        worse: the setting name of the other row.
        paper: what the paper reports where its table has no AP for these
            rows (the prior); ``None``: the difference of the rows' paper AP.
        count_diverged: the summary also says how many of the table's runs diverged.
    """

    text: str
    better: str
    worse: str
    paper: str | None = None
    count_diverged: bool = False


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of the study: a title, the x-axis name of its figure, its rows, and the claims the summary checks."""

    key: str
    title: str
    x_name: str
    settings: tuple[Setting, ...]
    steps_per_epoch: int = STEPS_PER_EPOCH
    eval_every_epochs: int | None = EVAL_EVERY_EPOCHS  # None: one evaluation, at the end
    steps: int | None = None  # None: the study's --steps
    data: str = "dense"  # the data setting its runs train on (paper_dense.DATASETS); its settings point the config there
    anchor_fit: bool = False  # its rows change the anchors or input size: the collection adds the anchor-fit line
    categorical: bool = False  # its rows are named settings, not points on an axis (the figure's x)
    claims: tuple[Claim, ...] = ()


def _fl(alpha, gamma) -> tuple[str, ...]:
    alpha_text = "null" if alpha is None else repr(float(alpha))
    return (f"model.focal_alpha={alpha_text}", f"model.focal_gamma={float(gamma)!r}")


_SCALES = {1: "(1.0,)", 2: "(1.0,1.4142135623730951)", 3: None, 4: "(1.0,1.189207115002721,1.4142135623730951,1.681792830507429)"}
_RATIOS = {1: "(1.0,)", 3: None}


def _anchors(num_scales: int, num_ratios: int) -> tuple[str, ...]:
    found = []
    if _SCALES[num_scales]:
        found.append(f"model.anchors.scales={_SCALES[num_scales]}")
    if _RATIOS[num_ratios]:
        found.append(f"model.anchors.aspect_ratios={_RATIOS[num_ratios]}")
    return tuple(found)


#: The paper's optimiser (SGD, momentum 0.9, LR 0.01, weight decay 1e-4, no clipping): whether
#: CE without the prior diverges is a claim about it; the study's Adam with clipping would hide it.
_SGD = ("train.optimizer=sgd", "train.learning_rate=0.01", "train.clipnorm=null", "train.weight_decay=0.0001")
_NO_WARMUP = ("train.warmup_steps=0",)

#: Table 1c's rows: scales, ratios, the paper's (AP, AP50, AP75).
_PAPER_1C = (
    (1, 1, (30.3, 49.0, 31.8)),
    (2, 1, (31.9, 50.0, 34.0)),
    (1, 3, (32.4, 52.3, 33.9)),
    (2, 3, (34.2, 53.1, 36.5)),
    (3, 3, (34.0, 52.5, 36.5)),
)
#: Table 1c's claims: more aspect ratios, and more scales, fit the objects better.
_CLAIMS_1C = (
    Claim("3 aspect ratios beat 1 (1 scale)", "anchors_1x3", "anchors_1x1"),
    Claim("a second scale beats 1 (1 aspect ratio)", "anchors_2x1", "anchors_1x1"),
)

# 1d: the paper's NMS-0.5 rows (ResNet-101); 1e: its ResNet-50 rows (test-dev).
TABLES = {
    "1a": Table(
        "1a",
        "Table 1a: alpha-balanced CE (gamma = 0)",
        "alpha",
        tuple(
            Setting(f"ce_a{alpha}", f"alpha = {alpha}", _fl(alpha, 0.0), paper, alpha)
            for alpha, paper in (
                (0.25, (10.8, 16.0, 11.7)),
                (0.5, (30.2, 46.7, 32.8)),
                (0.75, (31.1, 49.4, 33.0)),
                (0.9, (30.8, 49.7, 32.3)),
                (0.99, (28.7, 47.4, 29.9)),
            )
        ),
        claims=(
            Claim("alpha-balanced CE: alpha = 0.75 beats 0.5", "ce_a0.75", "ce_a0.5"),
            Claim("alpha-balanced CE: alpha = 0.75 beats 0.99", "ce_a0.75", "ce_a0.99"),
        ),
    ),
    "1b": Table(
        "1b",
        "Table 1b: focal loss, gamma with the paper's best alpha",
        "gamma",
        tuple(
            Setting(f"fl_g{gamma}_a{alpha}", f"gamma = {gamma}, alpha = {alpha}", _fl(alpha, gamma), paper, gamma)
            for gamma, alpha, paper in (
                (0.0, 0.75, (31.1, 49.4, 33.0)),
                (0.5, 0.5, (32.9, 51.7, 35.2)),
                (1.0, 0.25, (33.7, 52.0, 36.2)),
                (2.0, 0.25, (34.0, 52.5, 36.5)),
                (5.0, 0.25, (32.2, 49.6, 34.8)),
            )
        ),
        claims=(
            Claim("the focal loss (gamma 2) beats alpha-balanced CE (gamma 0)", "fl_g2.0_a0.25", "fl_g0.0_a0.75"),
            Claim("gamma 2 beats gamma 5", "fl_g2.0_a0.25", "fl_g5.0_a0.25"),
        ),
    ),
    "1c": Table(
        "1c",
        "Table 1c: anchors per location (scales x aspect ratios), FL gamma 2",
        "anchors per location",
        tuple(
            Setting(f"anchors_{s}x{r}", f"{s} scale(s) x {r} ratio(s)", _anchors(s, r), paper, s * r)
            for s, r, paper in _PAPER_1C
        ),
        anchor_fit=True,
        categorical=True,
        claims=_CLAIMS_1C,
    ),
    "1c_wide": Table(
        "1c_wide",
        "Table 1c on wider objects (16-92 px, w/h 1/3 to 3): anchors per location, FL gamma 2",
        "anchors per location",
        tuple(
            Setting(f"anchors_{s}x{r}", f"{s} scale(s) x {r} ratio(s)", paper_dense.data_overrides("wide") + _anchors(s, r), paper, s * r)
            for s, r, paper in _PAPER_1C
        ),
        data="wide",
        anchor_fit=True,
        categorical=True,
        claims=_CLAIMS_1C,
    ),
    # 1c_wide found no gain from 3 ratios. With low-quality matches (the default, as in the
    # paper's Detectron code) every object's best anchor is a positive however poorly it fits,
    # so box regression can make up for a missing ratio; without them an object whose best
    # anchor is below IoU 0.5 (52 % at 1 x 1 on this data, 24 % with 3 ratios) trains no box.
    "1c_wide_strict": Table(
        "1c_wide_strict",
        "Table 1c_wide without low-quality matches: 1 ratio against 3, FL gamma 2",
        "anchors per location",
        tuple(
            Setting(
                f"anchors_{s}x{r}",
                f"{s} scale(s) x {r} ratio(s), no low-quality matches",
                paper_dense.data_overrides("wide") + _anchors(s, r) + ("model.allow_low_quality_matches=false",),
                paper,
                s * r,
            )
            for s, r, paper in _PAPER_1C
            if (s, r) in ((1, 1), (1, 3))
        ),
        data="wide",
        anchor_fit=True,
        categorical=True,
        claims=(Claim("3 aspect ratios beat 1, without low-quality matches", "anchors_1x3", "anchors_1x1"),),
    ),
    "1d": Table(
        "1d",
        "Table 1d: OHEM (plain CE on the hardest anchors, NMS step skipped) against FL",
        "setting",
        (
            Setting("ohem_128", "OHEM, 128 per image", _fl(None, 0.0) + ("model.ohem_batch_size=128",), (32.8, 50.3, 35.1), 0),
            Setting("ohem_256", "OHEM, 256 per image", _fl(None, 0.0) + ("model.ohem_batch_size=256",), (31.0, 47.4, 33.0), 1),
            Setting(
                "ohem13_128",
                "OHEM 1:3, 128 per image",
                _fl(None, 0.0) + ("model.ohem_batch_size=128", "model.ohem_positive_fraction=0.25"),
                (31.1, 47.2, 33.2),
                2,
            ),
            Setting("fl", "FL (gamma 2, alpha 0.25)", (), (36.0, 54.9, 38.7), 3),
        ),
        categorical=True,
        claims=(Claim("FL beats OHEM (the paper's best: 128 per image)", "fl", "ohem_128"),),
    ),
    "1e": Table(
        "1e",
        "Table 1e: input size (the data is drawn at 192 px), FL gamma 2",
        "input size (px)",
        tuple(
            Setting(f"size{size}", f"{size} px (paper {paper_size})", (f"data.image_size={size}",), paper, size)
            for size, paper_size, paper in (
                (128, 400, (30.5, 47.8, 32.7)),
                (160, 500, (32.5, 50.9, 34.8)),
                (192, 600, (34.3, 53.2, 36.9)),
                (224, 700, (35.1, 54.2, 37.7)),
                (256, 800, (35.7, 55.0, 38.5)),
            )
        ),
        anchor_fit=True,
        claims=(Claim("a larger input is more accurate: 800 px (here 256) beats 400 px (here 128)", "size256", "size128"),),
    ),
    "prior": Table(
        "prior",
        "The prior: pi = 0.01 against bias 0 (pi = 0.5); plain CE with the study's Adam and with the paper's SGD (with and without warm-up)",
        "setting",
        (
            Setting("ce_pi0.01", "CE (no alpha), pi = 0.01, Adam", _fl(None, 0.0), None, 0),
            Setting("ce_bias0", "CE (no alpha), bias 0, Adam", _fl(None, 0.0) + ("model.prior_probability=0.5",), None, 1),
            Setting("ce_pi0.01_sgd", "CE (no alpha), pi = 0.01, SGD", _fl(None, 0.0) + _SGD, None, 2),
            Setting("ce_bias0_sgd", "CE (no alpha), bias 0, SGD", _fl(None, 0.0) + _SGD + ("model.prior_probability=0.5",), None, 3),
            Setting("fl_bias0", "FL (gamma 2, alpha 0.25), bias 0, Adam", ("model.prior_probability=0.5",), None, 4),
            # The paper names no warm-up; ours starts at 1/3 of the rate, which may be what keeps SGD from diverging.
            Setting("ce_pi0.01_sgd_nowarmup", "CE (no alpha), pi = 0.01, SGD, no warm-up", _fl(None, 0.0) + _SGD + _NO_WARMUP, None, 5),
            Setting(
                "ce_bias0_sgd_nowarmup",
                "CE (no alpha), bias 0, SGD, no warm-up",
                _fl(None, 0.0) + _SGD + _NO_WARMUP + ("model.prior_probability=0.5",),
                None,
                6,
            ),
        ),
        steps_per_epoch=PRIOR_LOG_STEPS,
        eval_every_epochs=None,
        steps=PRIOR_STEPS,
        categorical=True,
        claims=(
            Claim(
                "plain CE fails without the prior (bias 0) and trains with pi = 0.01 (SGD, no warm-up)",
                "ce_pi0.01_sgd_nowarmup",
                "ce_bias0_sgd_nowarmup",
                paper="CE with bias 0 diverges",
                count_diverged=True,
            ),
        ),
    ),
}
#: The budget run (not a table): FL gamma 2 at a constant learning rate (after the
#: warm-up), evaluated every 200 steps, to find where AP stops improving.
BUDGET = Table(
    "budget",
    "Budget: FL gamma 2, constant learning rate, AP every 200 steps",
    "step",
    (Setting("fl_constant_lr", "FL gamma 2, alpha 0.25, constant LR", ("train.decay_fractions=(0.999,)",), None, 0),),
    eval_every_epochs=2,
)
#: The same run on 1c_wide's data (its 3 x 3 anchors, the config's default), to check
#: that 1c_wide's 4800 steps are twice its plateau too.
BUDGET_WIDE = dataclasses.replace(
    BUDGET,
    key="budget_wide",
    title="Budget on the wide data: FL gamma 2, constant learning rate, AP every 200 steps",
    settings=(dataclasses.replace(BUDGET.settings[0], overrides=paper_dense.data_overrides("wide") + BUDGET.settings[0].overrides),),
    data="wide",
)
BUDGETS = {"dense": BUDGET, "wide": BUDGET_WIDE}  # --budget_data picks one

#: The paper's ms per image for Table 1e (ResNet-50, Nvidia M40 GPU).
PAPER_MS = {128: 64, 160: 72, 192: 98, 224: 121, 256: 153}
#: The paper's input size (shorter side, px) that each of our 1e sizes stands for.
PAPER_SIZE = {128: 400, 160: 500, 192: 600, 224: 700, 256: 800}


def setting_named(table: Table, name: str) -> Setting:
    """The row of ``table`` called ``name``.

    Example:
        >>> setting_named(TABLES["1d"], "fl").label
        'FL (gamma 2, alpha 0.25)'
    """
    for setting in table.settings:
        if setting.name == name:
            return setting
    raise KeyError(f"table {table.key} has no setting {name!r}; its settings: {[s.name for s in table.settings]}")
