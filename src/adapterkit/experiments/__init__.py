"""Experiments: one module per research system's comparison, run by ``adapterkit experiment NAME``.

Each module defines ``DESCRIPTION``, ``OPTIONS`` (its option groups, see :mod:`adapterkit.options`; the
command line and YAML files take them) and ``run(opts) -> int``; it writes a Markdown table, a JSON file
and PNG plots to its output directory.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError
from ..registry import Registry

EXPERIMENTS: Registry[str] = Registry("experiment")
"""Experiment name -> the module that implements it (imported on use)."""
EXPERIMENTS.register("mera", "adapterkit.experiments.mera")
EXPERIMENTS.register("adaptable", "adapterkit.experiments.adaptable")
EXPERIMENTS.register("effectiveness", "adapterkit.experiments.effectiveness")
EXPERIMENTS.register("fewshot", "adapterkit.experiments.fewshot")
EXPERIMENTS.register("pha", "adapterkit.experiments.pha")
EXPERIMENTS.register("unipelt", "adapterkit.experiments.unipelt")


def register_experiment(name: str, module: str) -> None:
    """Make ``adapterkit experiment NAME`` run the experiment module ``module`` (a dotted import path)."""
    EXPERIMENTS.register(name, module)


def get_experiment(name: str) -> ModuleType:
    """The experiment module registered as ``name``."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment {name!r}: unknown; known: {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
