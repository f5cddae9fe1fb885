"""Guards: every configuration parameter is used by the code, every command-line option reaches it.

An option parsed but silently ignored (or a config key nothing reads) is a bug a user cannot see.
"""

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from qsm_bids import cli
from qsm_bids.config import _SECTIONS, Config, choices, load_config

PKG = Path(cli.__file__).resolve().parent
SOURCE = "\n".join(p.read_text() for p in sorted(PKG.rglob("*.py")) if p.name != "config.py")

# options that steer the run rather than set a parameter, and the name main() reads them by
RUN_OPTIONS = {"help", "version", "bids_dir", "output_dir", "analysis_level", "participant_label",
               "session_label", "work_dir", "n_cpus", "mem_gb", "config", "skip_bids_validation", "verbose",
               "mask_dir", "report_only"}


def _fields():
    cfg = Config()
    return [(s, f.name) for s in _SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


@pytest.mark.parametrize("section,name", _fields())
def test_every_config_field_is_read_by_the_code(section, name):
    # read as an attribute of its section (cfg.recon.x, p.x, g.x, ...) somewhere outside config.py
    assert re.search(rf"\.{name}\b", SOURCE), f"{section}.{name} is never read by the code"


def _actions():
    return [a for a in cli.build_parser()._actions if a.dest not in ("help", "version")]


def _non_default(action):
    if isinstance(action, argparse._StoreTrueAction):
        return []
    if action.nargs == 2:
        return ["A", "B"]
    if action.type in (cli._positive_int, int):
        return ["7"]
    if action.type is cli._positive_float:
        return ["2.5"]
    return ["x_value"]


@pytest.mark.parametrize("action", _actions(), ids=lambda a: a.dest)
def test_every_option_reaches_the_config_or_the_run(action, tmp_path):
    if action.dest in RUN_OPTIONS or not action.option_strings:
        main_src = Path(cli.__file__).read_text()
        assert f"args.{action.dest}" in main_src, f"{action.dest} is parsed but never used"
        return
    values = [[c] for c in action.choices] if action.choices else [_non_default(action)]
    changed = []
    for value in values:
        argv = ["bids", "out", "group", action.option_strings[-1], *value]
        if action.dest in ("atlas", "atlas_labels"):
            argv = ["bids", "out", "group", "--atlas", "a.nii.gz", "--atlas-labels", "a.tsv"]
        cfg = load_config(None, cli._overrides(cli.build_parser().parse_args(argv)))
        changed.append(cfg.to_dict() != Config().to_dict())
    assert any(changed), f"--{action.dest} does not change the configuration"


def test_choices_of_the_command_line_are_the_config_literals():
    parser = cli.build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for dest, (section, name) in {"background": ("recon", "background"), "inversion": ("recon", "inversion"),
                                  "reference": ("recon", "reference"), "registration": ("registration", "preset"),
                                  "template": ("group", "template"), "phase_units": ("inputs", "phase_units")}.items():
        assert list(by_dest[dest].choices) == choices(section, name)


def test_method_tables_match_the_config_choices():
    from qsm_bids.recon.pipeline import BACKGROUND_METHODS, INVERSION_METHODS

    assert list(BACKGROUND_METHODS) == choices("recon", "background")
    assert list(INVERSION_METHODS) == choices("recon", "inversion")
