"""Which participants enter a group analysis, and the folder a named analysis writes to.

Subgroup and sensitivity analyses select participants by participants.tsv
values: ``--restrict group=ALS`` keeps only the rows whose ``group`` is
``ALS``; ``--exclude genetics=C9orf72`` drops the rows whose ``genetics`` is
``C9orf72``. A condition is ``COLUMN=VALUE[,VALUE...]`` (any of the values
matches); several restrictions must all hold, and a row matching any
exclusion is left out. A missing value (n/a) never matches: such a row is
left out by a restriction (its value is unknown) and kept by an exclusion.

An analysis that differs from the study's main design (another group column
or levels, or any restriction or exclusion) is written to its own folder
``OUTPUT_DIR/group/<name>/``, its name spelled from the analysis (see
:func:`analysis_name`), so it never overwrites the main results in
``OUTPUT_DIR/group/``. Pure functions on DataFrames; no file I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from ..errors import DataError, UsageError

__all__ = ["SELECTION_SIDECAR", "Condition", "Selection", "analysis_name", "parse_condition", "select_participants",
           "selection_table"]


@dataclass(frozen=True)
class Condition:
    """``column`` equals one of ``values``."""

    column: str
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.column}={','.join(self.values)}"


def parse_condition(text) -> Condition:
    """``'genetics=C9orf72'`` or ``'onset=bulbar,limb'`` -> :class:`Condition`.

    Raises
    ------
    UsageError
        The text is not ``COLUMN=VALUE[,VALUE...]``.
    """
    if isinstance(text, Condition):
        return text
    column, sep, rest = str(text).partition("=")
    values = tuple(v.strip() for v in rest.split(",") if v.strip())
    if not sep or not column.strip() or not values:
        raise UsageError(f"selection {text!r} is not COLUMN=VALUE[,VALUE...] (e.g. genetics=C9orf72)")
    return Condition(column.strip(), values)


def _matches(column: pd.Series, values: Sequence[str]) -> pd.Series:
    """Rows of ``column`` equal to one of ``values`` as text, or as numbers (``1`` matches 1.0)."""
    text = column.astype("string").str.strip()
    hit = text.isin(list(values))
    numeric = pd.to_numeric(column, errors="coerce")
    wanted = pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna()
    if len(wanted):
        hit = hit | numeric.isin(list(wanted))
    return hit.fillna(False).astype(bool) & column.notna()


@dataclass
class Selection:
    """The participants kept and, for each one left out, why.

    Attributes
    ----------
    participants : DataFrame
        The rows kept, in their participants.tsv order.
    left_out : DataFrame
        participant_id and reason of every row left out.
    warnings : list of str
        Conditions that matched no participant (a typo is the usual cause).
    """

    participants: pd.DataFrame
    left_out: pd.DataFrame
    warnings: list = field(default_factory=list)


def select_participants(frame: pd.DataFrame, restrict: Sequence = (), exclude: Sequence = (),
                        source: str = "participants.tsv") -> Selection:
    """Apply ``--restrict`` and ``--exclude`` conditions to a participants table.

    Parameters
    ----------
    frame : DataFrame
        participants.tsv, with a ``participant_id`` column.
    restrict, exclude : sequence of str or Condition
    source : the file named in errors.

    Raises
    ------
    UsageError
        A condition is malformed.
    DataError
        A condition names a column that ``frame`` lacks.
    """
    restrict = [parse_condition(c) for c in restrict]
    exclude = [parse_condition(c) for c in exclude]
    for cond in (*restrict, *exclude):
        if cond.column not in frame.columns:
            raise DataError(f"{source}: no column '{cond.column}' for the selection '{cond}' "
                            f"(columns: {', '.join(map(str, frame.columns))})")
    reasons = pd.Series("", index=frame.index, dtype=object)
    warnings = []
    for cond in restrict:
        hit = _matches(frame[cond.column], cond.values)
        if not hit.any():
            warnings.append(f"--restrict {cond}: no participant has {cond}")
        missing = frame[cond.column].isna()
        for i in frame.index[~hit & (reasons == "")]:
            reasons[i] = (f"no value for {cond.column} (restricted to {cond})" if missing[i]
                          else f"{cond.column}={frame.at[i, cond.column]} (restricted to {cond})")
    for cond in exclude:
        hit = _matches(frame[cond.column], cond.values)
        if not hit.any():
            warnings.append(f"--exclude {cond}: no participant has {cond}; nobody was excluded by it")
        for i in frame.index[hit & (reasons == "")]:
            reasons[i] = f"{cond.column}={frame.at[i, cond.column]} (excluded: {cond})"
    out = reasons != ""
    left_out = pd.DataFrame({"participant_id": frame.loc[out, "participant_id"].astype(str).to_numpy(),
                             "reason": reasons[out].astype(str).to_numpy()})
    return Selection(participants=frame.loc[~out], left_out=left_out, warnings=warnings)


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", str(text))


def analysis_name(group_column: str, groups: Sequence[str], restrict: Sequence = (),
                  exclude: Sequence = (), main_column: str = "group",
                  main_groups: Sequence[str] = ("ALS", "control")) -> str:
    """The folder name of an analysis under ``OUTPUT_DIR/group/``; ``""`` for the main one.

    The main analysis compares ``main_groups`` of ``main_column`` (the
    study's design from the configuration) in every participant. Any other
    analysis is named from its parts joined by ``_``::

        onset-bulbar-vs-limb_only-group-ALS      --group-column onset --groups bulbar limb --restrict group=ALS
        exclude-genetics-C9orf72                 --exclude genetics=C9orf72

    Only letters and digits of column names and values are kept; when that
    changed a name, a short hash of the full selection is appended so two
    analyses never share a folder.
    """
    restrict = [parse_condition(c) for c in restrict]
    exclude = [parse_condition(c) for c in exclude]
    groups = [str(g) for g in groups]
    parts, given = [], []
    if group_column != main_column or groups != [str(g) for g in main_groups]:
        parts.append("-".join([_token(group_column), _token(groups[0]), "vs", _token(groups[1])]))
        given += [group_column, *groups]
    for word, conds in (("only", restrict), ("exclude", exclude)):
        for c in conds:
            parts.append("-".join([word, _token(c.column), "+".join(_token(v) for v in c.values)]))
            given += [word, c.column, *c.values]
    if not parts:
        return ""
    name = "_".join(parts)
    if any(_token(x) != x or not x for x in given):
        name += "_h" + hashlib.sha256(repr(given).encode()).hexdigest()[:6]
    return name


#: Column descriptions of ``selection.tsv``.
SELECTION_SIDECAR = {
    "participant_id": {"Description": "Participant (every row of participants.tsv)."},
    "included": {"Description": "yes: entered this analysis; no: left out (see reason).",
                 "Levels": {"yes": "entered", "no": "left out"}},
    "reason": {"Description": "Why the participant was left out: a --restrict or --exclude condition, a "
                              "group level outside the compared ones, a missing group or covariate value, "
                              "or missing participant results. Empty when included."},
}


def selection_table(frame: pd.DataFrame, included: Sequence[str], left_out: Sequence[tuple[str, str]],
                    group_column: str) -> pd.DataFrame:
    """``selection.tsv``: every participants.tsv row with ``included`` and the ``reason`` when not.

    ``included`` and ``left_out`` hold participant ids with or without ``sub-``; the first reason
    given for a participant is kept.
    """
    def bare(p):
        return str(p).removeprefix("sub-")

    inside = {bare(p) for p in included}
    reasons: dict = {}
    for pid, reason in left_out:
        reasons.setdefault(bare(pid), reason)
    ids = [bare(p) for p in frame["participant_id"]]
    values = frame[group_column].astype("string") if group_column in frame.columns else [pd.NA] * len(ids)
    rows = [{"participant_id": f"sub-{p}", group_column: v,
             "included": "yes" if p in inside else "no",
             "reason": "" if p in inside else reasons.get(p, "not selected")}
            for p, v in zip(ids, values)]
    return pd.DataFrame(rows, columns=["participant_id", group_column, "included", "reason"])
