"""The study's statistics: mean ± std over seeds, differences paired by seed, the screen against the paper's order.

Pure functions of the collected records (``[{"setting", "results",
"missing"}]`` rows, :func:`experiments.study_runs.collect`); nothing here
reads a file or trains.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"mean ± std"`` (sample std, n - 1) of ``values`` times ``scale``; one value: ``"v (1 seed)"``.

    Example:
        >>> mean_std([0.30, 0.32, 0.34], scale=100)
        '32.0 ± 2.0'
        >>> mean_std([0.3], scale=100), mean_std([])
        ('30.0 (1 seed)', '—')
    """
    values = [scale * v for v in values]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def ap_by_seed(row: dict) -> dict[int, float]:
    """A collected row's AP in points, keyed by seed.

    Example:
        >>> ap_by_seed({"results": [{"AP": 0.5, "seed": 0}, {"AP": 0.625, "seed": 2}]})
        {0: 50.0, 2: 62.5}
    """
    return {result["seed"]: 100 * result["AP"] for result in row["results"]}


def difference(xa: dict, xb: dict) -> tuple[float, float | None, bool]:
    """Row a minus row b (AP points, keyed by seed): ``(mean difference, its SE or None, paired)``.

    Paired by seed where at least 2 seeds are common (a seed's rows share
    its backbone, so its offset cancels); else the difference of the means
    with Welch's SE (``None`` with fewer than 2 seeds in a row).

    Example:
        >>> difference({0: 60.0, 1: 63.0, 2: 66.0}, {0: 59.0, 1: 62.5, 2: 64.5})
        (1.0, 0.2886751345948129, True)
        >>> difference({0: 60.0, 1: 62.0}, {2: 59.0})
        (2.0, None, False)
    """
    common = sorted(set(xa) & set(xb))
    if len(common) >= 2:
        d = [xa[k] - xb[k] for k in common]
        return statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d)), True
    a, b = list(xa.values()), list(xb.values())
    ours = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) if min(len(a), len(b)) >= 2 else None
    return ours, se, False


def verdict(ours: float, se: float | None, paper: float) -> str:
    """``"agree"`` or ``"disagree"`` where ``ours`` is beyond twice its standard error, else ``"unclear"``.

    Example:
        >>> verdict(3.0, 1.0, 2.1), verdict(-3.0, 1.0, 2.1), verdict(1.0, 1.0, 2.1), verdict(5.0, None, 2.1)
        ('agree', 'disagree', 'unclear', 'unclear')
    """
    if se is None or abs(ours) <= 2 * se:
        return "unclear"
    return "agree" if ours * paper > 0 else "disagree"


def compare_to_paper(rows: list[dict], ties: float = 0.1) -> dict:
    """Does our AP order the rows as the paper's does? Every pair of rows, judged by the seed spread.

    For each pair of rows with a paper AP and results, the paper's sign of
    ``AP_i - AP_j`` (pairs within ``ties`` points in the paper are skipped) is
    compared with ours. The rows of one seed share its backbone and data,
    so where two rows have at least 2 seeds in common the difference is
    paired by seed: ``d`` is the mean of the per-seed differences over the
    common seeds and ``SE = s_d / sqrt(n)``. Otherwise ``d`` is the
    difference of the means and ``SE = sqrt(s_i^2/n_i + s_j^2/n_j)`` (sample
    standard deviations, AP in points). ``d`` counts as *clear* when
    ``|d| > 2 * SE``. That is a rough screen, not a significance test: with
    3 seeds a two-sided t-test at 5 % needs 4.3 standard errors paired (2
    degrees of freedom), about 2.8 unpaired (Welch, about 4).

    Args:
        rows: ``collect`` output (``[{"setting", "results", "missing"}]``).
        ties: paper differences (AP points) at or below this are not a claim.

    Returns:
        ``{"pairs": [{"a", "b", "paper", "ours", "se", "paired", "verdict"}], "agree",
        "disagree", "unclear", "best_ours", "best_paper"}``; verdict is one of
        ``"agree"``, ``"disagree"`` (both clear), ``"unclear"`` (within 2 SE
        or one seed). Labels name the rows; ``best_*`` is the label of the
        highest mean (ours) or AP (paper), or ``None``.

    Example:
        >>> from experiments.study_tables import TABLES
        >>> t = TABLES["1b"]
        >>> def row(setting, aps):
        ...     return {"setting": setting, "missing": [],
        ...             "results": [{"AP": a, "seed": k} for k, a in enumerate(aps)]}
        >>> found = compare_to_paper([row(t.settings[0], [0.60, 0.63, 0.66]),
        ...                           row(t.settings[3], [0.64, 0.66, 0.71])])
        >>> found["agree"], found["disagree"], found["unclear"], found["best_ours"]
        (1, 0, 0, 'gamma = 2.0, alpha = 0.25')
        >>> pair = found["pairs"][0]
        >>> round(pair["ours"], 1), round(pair["se"], 2), pair["paired"]
        (-4.0, 0.58, True)

        Unpaired, the seeds' shared offsets (3 and 5 points) would hide it:
        Welch's SE is 2.71 and the pair would be "unclear".
    """
    usable = [(r["setting"], ap_by_seed(r)) for r in rows if r["setting"].paper and r["results"]]
    pairs = []
    for i, (a, xa) in enumerate(usable):
        for b, xb in usable[i + 1 :]:
            paper = a.paper[0] - b.paper[0]
            if abs(paper) <= ties:
                continue
            ours, se, paired = difference(xa, xb)
            pairs.append({"a": a.label, "b": b.label, "paper": paper, "ours": ours, "se": se, "paired": paired, "verdict": verdict(ours, se, paper)})
    found = {"pairs": pairs, **{v: sum(p["verdict"] == v for p in pairs) for v in ("agree", "disagree", "unclear")}}
    found["best_ours"] = max(usable, key=lambda u: statistics.mean(u[1].values()))[0].label if usable else None
    found["best_paper"] = max(usable, key=lambda u: u[0].paper[0])[0].label if usable else None
    return found


def _paired_note(pairs: list[dict]) -> str:
    paired = sum(p["paired"] for p in pairs)
    if paired == len(pairs):
        return " (paired by seed)"
    return f" (paired by seed in {paired} of {len(pairs)} pairs)" if paired else ""


def format_comparison(found: dict) -> str:
    """One markdown paragraph from ``compare_to_paper``: the counts, the best rows, the clear disagreements.

    Example:
        >>> print(format_comparison({"pairs": [], "agree": 0, "disagree": 0, "unclear": 0,
        ...                          "best_ours": None, "best_paper": None}))
        <BLANKLINE>
    """
    pairs = found["pairs"]
    if not pairs:
        return ""
    same_sign = sum(p["ours"] * p["paper"] > 0 for p in pairs)
    text = (
        f"Against the paper's order: {same_sign} of {len(pairs)} pairs of rows have the paper's sign. "
        f"Beyond twice their standard error{_paired_note(pairs)}: {found['agree']} agree, {found['disagree']} disagree; "
        f"within it (or with one seed): {found['unclear']}. "
        f"Best row here: {found['best_ours']}; in the paper: {found['best_paper']}."
    )
    against = [p for p in pairs if p["verdict"] == "disagree"]
    if against:
        text += " Clearly against the paper: " + "; ".join(
            f"{p['a']} vs {p['b']} ({p['ours']:+.1f} ± {p['se']:.1f} here, {p['paper']:+.1f} in the paper)" for p in against
        ) + "."
    return text


def hardest_share_for_half(losses: np.ndarray) -> float:
    """The smallest fraction of anchors, hardest first, whose losses sum to half of the total.

    Example:
        >>> hardest_share_for_half(np.array([1.0, 1.0, 1.0, 1.0]))
        0.5
        >>> hardest_share_for_half(np.array([0.0, 0.0, 0.0, 1.0]))
        0.25
    """
    hardest_first = np.sort(np.asarray(losses, np.float64))[::-1]
    total = hardest_first.sum()
    if hardest_first.size == 0 or total <= 0:
        return float("nan")
    needed = int(np.searchsorted(np.cumsum(hardest_first), 0.5 * total)) + 1
    return needed / hardest_first.size


def percent_2g(shares: Sequence[float]) -> str:
    """Shares as percent, 2 significant digits (they span 12 % to 0.0003 %): mean ± sample std.

    Example:
        >>> percent_2g([0.12, 0.10, 0.11]), percent_2g([0.0000312]), percent_2g([0.2, 0.2])
        ('11 ± 1 %', '0.0031 %', '20 ± 0 %')
    """
    mean = 100 * statistics.mean(shares)
    if len(shares) < 2:
        return f"{mean:.2g} %"
    return f"{mean:.2g} ± {100 * statistics.stdev(shares):.1g} %"
