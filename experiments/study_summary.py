"""The summary at the top of the study's doc: each of the paper's claims, our result over the seeds, reproduced or not.

A claim of a table (:class:`experiments.study_tables.Claim`) is a pair of
its rows; our result is their AP difference paired by seed (the rows of a
seed share its backbone), with its standard error, and the claim counts as
reproduced when ours has the paper's sign beyond twice that standard error
(:func:`experiments.study_stats.verdict`, the screen under every table).
The rows come from the records; for a table whose section is kept as an
earlier collection wrote it (its records are gone), from that section's
"AP per seed" column (:func:`rows_from_section`). Figure 4's claims are
read from the line under the figure.
"""

from __future__ import annotations

from typing import Sequence

from experiments import study_figure4, study_stats
from experiments.study_tables import Claim, Table, setting_named

#: Figure 4: "a tiny share" is under this fraction of gamma 0's share; "barely moves" keeps at least this one.
TINY_SHARE, SIMILAR_SHARE = 1 / 10, 2 / 3
VERDICTS = {"agree": "yes", "disagree": "no (reversed)", "unclear": "no (no clear difference)"}
KEPT_MARK = "†"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def rows_from_section(table: Table, section: str, seeds: Sequence[int]) -> list[dict]:
    """:func:`experiments.study_runs.collect`-like rows from a table's markdown section (AP per seed, 0.1 point).

    The seeds of a row are ``seeds`` less those its "seeds" cell names as
    missing; a seed's AP marked "(diverged)" is recorded so.

    Example:
        >>> from experiments.study_tables import TABLES
        >>> section = ("### Table 1d (complete)\\n\\n| setting | seeds | AP | AP50 | AP75 | AP per seed | paper |\\n"
        ...            "| --- | --- | --- | --- | --- | --- | --- |\\n"
        ...            "| FL (gamma 2, alpha 0.25) | 2 (missing 1) | x | x | x | 65.2, 67.1 (diverged) | x |")
        >>> row = rows_from_section(TABLES["1d"], section, [0, 1, 2])[-1]
        >>> row["setting"].name, row["missing"], [(r["seed"], round(r["AP"], 3), r["diverged"]) for r in row["results"]]
        ('fl', [1], [(0, 0.652, False), (2, 0.671, True)])
    """
    all_lines = section.splitlines()
    start = next((i for i, line in enumerate(all_lines) if line.startswith("| setting | seeds |")), None)
    if start is None:
        return [{"setting": s, "results": [], "missing": list(seeds)} for s in table.settings]
    lines = []
    for line in all_lines[start:]:  # the table: its header, "| --- |" and a line per row
        if not line.startswith("| "):
            break
        lines.append(line)
    header = _cells(lines[0])
    seeds_at, per_seed_at = header.index("seeds"), header.index("AP per seed")
    by_label = {}
    for line in lines[2:]:  # after the header and its "| --- |" line
        cells = _cells(line)
        missing = [int(s) for s in cells[seeds_at].partition("(missing ")[2].rstrip(")").split(", ") if s]
        values = [v for v in cells[per_seed_at].split(", ") if v != "—"]
        present = [s for s in seeds if s not in missing]
        results = [
            {"seed": seed, "AP": float(v.split()[0]) / 100, "diverged": v.endswith("(diverged)")} for seed, v in zip(present, values)
        ]
        by_label[cells[0]] = {"results": results, "missing": missing}
    return [{"setting": s, **by_label.get(s.label, {"results": [], "missing": list(seeds)})} for s in table.settings]


def judge(table: Table, claim: Claim, rows: list[dict], seeds: Sequence[int]) -> dict:
    """One claim against the collected ``rows``: ``{"paper", "ours", "reproduced"}`` as markdown cells.

    Example:
        >>> from experiments.study_tables import TABLES
        >>> t = TABLES["1d"]
        >>> rows = [{"setting": s, "missing": [], "results": [{"AP": ap + 0.01 * k, "seed": k} for k in range(3)]}
        ...         for s, ap in zip(t.settings, (0.60, 0.61, 0.62, 0.66))]
        >>> rows[-1]["results"][2]["AP"] += 0.01
        >>> judge(t, t.claims[0], rows, [0, 1, 2])
        {'paper': '+3.2 (36.0 vs 32.8)', 'ours': '+6.3 ± 0.3 (67.3 ± 1.5 vs 61.0 ± 1.0; 3 seeds)', 'reproduced': 'yes'}
    """
    by_name = {row["setting"].name: row for row in rows}
    better, worse = by_name[claim.better], by_name[claim.worse]
    if claim.paper is None:
        a, b = setting_named(table, claim.better).paper[0], setting_named(table, claim.worse).paper[0]
        paper, paper_text = a - b, f"{a - b:+.1f} ({a:.1f} vs {b:.1f})"
    else:
        paper, paper_text = 1.0, claim.paper
    xa, xb = study_stats.ap_by_seed(better), study_stats.ap_by_seed(worse)
    if not xa or not xb:
        return {"paper": paper_text, "ours": "—", "reproduced": "not run yet"}
    ours, se, paired = study_stats.difference(xa, xb)
    n = len(set(xa) & set(xb)) if paired else min(len(xa), len(xb))
    means = f"{study_stats.mean_std(list(xa.values()))} vs {study_stats.mean_std(list(xb.values()))}"
    text = f"{ours:+.1f}" + (f" ± {se:.1f}" if se is not None else "") + f" ({means}; {n} seed{'s' if n != 1 else ''})"
    if claim.count_diverged:
        results = [r for row in rows for r in row["results"]]
        text += f"; {sum(bool(r.get('diverged')) for r in results)} of {len(results)} runs diverged"
    reproduced = VERDICTS[study_stats.verdict(ours, se, paper)]
    if n < len(seeds):
        reproduced = f"not yet ({n} of {len(seeds)} seeds; so far {reproduced})"
    return {"paper": paper_text, "ours": text, "reproduced": reproduced}


def _share(text: str) -> tuple[float, str]:
    """``"12 ± 1 %"`` -> ``(12.0, "1")``; one model: ``(12.0, "")``."""
    mean, _, std = text.rstrip(" %").partition(" ± ")
    return float(mean), std


def figure4_claims(line: str | None) -> list[list[str]]:
    """Figure 4's two claims as summary rows (``[claim, paper, ours, reproduced]``), from the line under the figure.

    Example:
        >>> line = (study_figure4.LINE_START + " (mean ± std over 3 model(s), 104 validation images each): "
        ...         "foreground: gamma 0: 12 ± 1 %, gamma 2: 6.1 ± 0.5 %; background: gamma 0: 4.3 ± 0.8 %, gamma 2: 0.0045 ± 0.0004 %.")
        >>> [row[3] for row in figure4_claims(line)]
        ['yes', 'no (falls to 0.51 of gamma 0)']
    """
    claims = [
        ("with gamma 2, half of the background loss sits on a tiny share of the hardest anchors", "a small fraction", "background"),
        ("the foreground loss barely moves with gamma (half of it on the hardest ~20 %)", "about 20 % at every gamma", "foreground"),
    ]
    if not line:
        return [[claim, paper, "—", "not run yet"] for claim, paper, _ in claims]
    shares = study_figure4.shares_from_line(line)
    found = []
    for claim, paper, group in claims:
        (low, low_std), (high, high_std) = _share(shares[group][0.0]), _share(shares[group][2.0])
        spread = f" (± {low_std} and ± {high_std} over the models)" if low_std and high_std else ""
        ours = f"{low:g} % at gamma 0, {high:g} % at gamma 2{spread}"
        ratio = high / low
        if group == "background":
            reproduced = "yes" if ratio < TINY_SHARE else f"no (falls to {ratio:.2g} of gamma 0)"
        else:
            reproduced = "yes" if ratio >= SIMILAR_SHARE else f"no (falls to {ratio:.2g} of gamma 0)"
        found.append([claim, paper, ours, reproduced])
    return found


def summary(tables: Sequence[Table], rows: dict[str, list[dict]], seeds: Sequence[int], kept: set[str], figure4_line: str | None) -> str:
    """The markdown of the summary: the table of claims and the notes under it.

    Args:
        tables: the study's tables, in order.
        rows: per table key, its collected rows.
        seeds: the seeds the doc is written for.
        kept: keys of the tables whose rows were read from a kept section.
        figure4_line: the line under Figure 4, or ``None``.
    """
    lines = [
        "## Results",
        "",
        "Each claim the paper makes with a table, and whether it holds on the study's data. Paper: its difference "
        "in COCO AP (points). Ours: the same difference on our validation split, paired by seed, ± its standard error "
        "(the rows' AP as mean ± std over the seeds). Reproduced: ours has the paper's sign beyond twice its standard "
        "error, with every seed run; a rough screen, not a test (with 3 seeds a paired t-test at 5 % needs 4.3 "
        "standard errors). The sections after this table give every row, the measurements and the reading.",
        "",
        "| table | the paper's claim | paper | ours | reproduced |",
        "| --- | --- | --- | --- | --- |",
    ]
    for table in tables:
        for claim in table.claims:
            cells = judge(table, claim, rows[table.key], seeds)
            mark = KEPT_MARK if table.key in kept and cells["ours"] != "—" else ""
            lines.append(f"| {table.key} | {claim.text} | {cells['paper']} | {cells['ours']}{mark} | {cells['reproduced']} |")
    for claim, paper, ours, reproduced in figure4_claims(figure4_line):
        lines.append(f"| Figure 4 | {claim} | {paper} | {ours} | {reproduced} |")
    if kept:
        lines += ["", f"{KEPT_MARK} From the per-seed AP of a section kept as an earlier collection wrote it (to 0.1 point): its run records are gone."]
    lines += [
        "",
        f"Figure 4's shares: the share of the hardest anchors that holds half of the loss; a tiny share is under "
        f"{TINY_SHARE:.2g} of gamma 0's, barely moving is at least {SIMILAR_SHARE:.2g} of it.",
    ]
    return "\n".join(lines)
