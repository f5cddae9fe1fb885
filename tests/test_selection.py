"""Participant selection (--restrict/--exclude) and analysis folder names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qsm_bids.errors import DataError, UsageError
from qsm_bids.group.selection import analysis_name, parse_condition, select_participants


def _participants():
    return pd.DataFrame({
        "participant_id": ["01", "02", "03", "04", "05", "06", "07"],
        "group": ["ALS", "ALS", "ALS", "ALS", "control", "control", "ALS"],
        "onset": ["bulbar", "limb", "limb", np.nan, np.nan, np.nan, "bulbar"],
        "genetics": ["C9orf72", np.nan, "SOD1", np.nan, np.nan, "C9orf72", np.nan],
        "site": [1, 2, 1, 2, 1, 2, 1],
    })


def test_parse_condition():
    c = parse_condition(" onset = bulbar, limb ")
    assert (c.column, c.values, str(c)) == ("onset", ("bulbar", "limb"), "onset=bulbar,limb")
    for bad in ("genetics", "=x", "genetics=", "genetics=,"):
        with pytest.raises(UsageError, match="COLUMN=VALUE"):
            parse_condition(bad)


def test_restrict_and_exclude_with_reasons():
    sel = select_participants(_participants(), restrict=["group=ALS"], exclude=["genetics=C9orf72"])
    assert list(sel.participants["participant_id"]) == ["02", "03", "04", "07"]
    reasons = dict(zip(sel.left_out["participant_id"], sel.left_out["reason"]))
    assert reasons == {"01": "genetics=C9orf72 (excluded: genetics=C9orf72)",
                       "05": "group=control (restricted to group=ALS)",
                       "06": "group=control (restricted to group=ALS)"}
    assert sel.warnings == []


def test_missing_values_never_match():
    sel = select_participants(_participants(), restrict=["onset=bulbar,limb"])
    assert list(sel.participants["participant_id"]) == ["01", "02", "03", "07"]
    assert set(sel.left_out["reason"]) == {"no value for onset (restricted to onset=bulbar,limb)"}
    # n/a genetics is not a carrier: kept by the exclusion
    sel = select_participants(_participants(), exclude=["genetics=C9orf72,SOD1"])
    assert list(sel.participants["participant_id"]) == ["02", "04", "05", "07"]


def test_numeric_values_and_several_restrictions():
    frame = _participants()
    frame["site"] = frame["site"].astype(float)
    sel = select_participants(frame, restrict=["site=1", "group=ALS"])
    assert list(sel.participants["participant_id"]) == ["01", "03", "07"]


def test_unmatched_condition_warns_and_unknown_column_fails():
    sel = select_participants(_participants(), exclude=["genetics=C9ORF72"])
    assert len(sel.participants) == 7
    assert sel.warnings == [("--exclude genetics=C9ORF72: no participant has genetics=C9ORF72; "
                             "nobody was excluded by it")]
    with pytest.raises(DataError, match="participants.tsv: no column 'gene'"):
        select_participants(_participants(), exclude=["gene=C9orf72"])


def test_analysis_names():
    assert analysis_name("group", ["ALS", "control"]) == ""
    assert analysis_name("onset", ["bulbar", "limb"], restrict=["group=ALS"]) == \
        "onset-bulbar-vs-limb_only-group-ALS"
    assert analysis_name("group", ["ALS", "control"], exclude=["genetics=C9orf72"]) == \
        "exclude-genetics-C9orf72"
    assert analysis_name("sex", ["F", "M"], restrict=["group=ALS"], exclude=["genetics=C9orf72,SOD1"]) \
        == "sex-F-vs-M_only-group-ALS_exclude-genetics-C9orf72+SOD1"
    # characters dropped from a name: a hash keeps look-alike selections apart
    a = analysis_name("group", ["ALS", "control"], exclude=["genetics=C9 orf72"])
    b = analysis_name("group", ["ALS", "control"], exclude=["genetics=C9-orf72"])
    assert a.startswith("exclude-genetics-C9orf72_h") and b.startswith("exclude-genetics-C9orf72_h")
    assert a != b
    # the main design is the configured one
    assert analysis_name("diagnosis", ["PD", "HC"], main_column="diagnosis", main_groups=["PD", "HC"]) == ""


def test_selection_table():
    from qsm_bids.group.selection import selection_table

    frame = _participants()
    sel = select_participants(frame, restrict=["group=ALS"])
    table = selection_table(frame, ["sub-01", "02", "03"], [*zip(sel.left_out["participant_id"],
                                                                 sel.left_out["reason"]),
                                                            ("04", "participant results missing (regions)")],
                            "group")
    assert list(table.columns) == ["participant_id", "group", "included", "reason"]
    assert list(table["included"]) == ["yes", "yes", "yes", "no", "no", "no", "no"]
    assert table.loc[3, "reason"] == "participant results missing (regions)"
    assert table.loc[4, "reason"] == "group=control (restricted to group=ALS)"
    assert table.loc[6, "reason"] == "not selected"
