"""YAML + command-line configuration for the training examples (``--config file.yaml`` then ``--key value``).

The YAML file is a flat mapping of dataclass fields (any of the dataclasses handed to ``HfArgumentParser``). It is
turned into command-line tokens placed *before* the real command line, so a flag given on the command line wins.
Mappings (e.g. ``tokenizer_overrides: {hidden_size: 64}``) become JSON strings; lists become repeated values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import get_type_hints

import yaml
from transformers import HfArgumentParser, TrainingArguments


def yaml_to_argv(mapping: dict) -> list[str]:
    """``{"lr": 1e-4, "bf16": True, "report_to": ["none"], "x": {"a": 1}}`` ->
    ``["--lr", "0.0001", "--bf16", "True", "--report_to", "none", "--x", '{"a": 1}']`` (``None`` values are skipped).

    >>> yaml_to_argv({"max_steps": 10, "overrides": {"a": 1}, "skip": None})
    ['--max_steps', '10', '--overrides', '{"a": 1}']
    """
    if not isinstance(mapping, dict):
        raise ValueError(f"the YAML config must be a mapping of argument names to values, got {type(mapping).__name__}")
    argv: list[str] = []
    for key, value in mapping.items():
        if value is None:
            continue
        if isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *(str(v) for v in value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the description's command lines kept as written."""


class PrologueArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose ``--help`` reads top-down: the description, ``--config``, then each dataclass's own
    (Prologue) flags as one group per dataclass, and the flags inherited from ``transformers.TrainingArguments`` last
    in their own group."""

    def __init__(self, dataclass_types: Sequence[type], description: str | None = None):
        self._inherited_group = None
        super().__init__(
            tuple(dataclass_types),
            description=description,
            formatter_class=_HelpFormatter,
            usage="%(prog)s [-h] [--config YAML] [--FLAG VALUE ...]",  # argparse's own lists every flag (~170 lines)
        )
        # argparse prints the default group first: -h, then --config
        self.add_argument(
            "--config",
            metavar="YAML",
            default=argparse.SUPPRESS,  # read before parsing; no namespace entry (it would come back as an output)
            help="YAML file: a flat mapping of the flags below (names without --) to values; flags given on the "
            "command line override it",
        )

    def _add_dataclass_arguments(self, dtype: type) -> None:
        type_hints = get_type_hints(dtype)
        inherited = {f.name for f in dataclasses.fields(TrainingArguments)} if issubclass(dtype, TrainingArguments) else set()
        own = self.add_argument_group(f"{dtype.__name__} (Prologue)", (dtype.__doc__ or "").strip().split("\n")[0])
        for field in dataclasses.fields(dtype):
            if not field.init:
                continue
            field.type = type_hints[field.name]
            if field.name in inherited:
                if self._inherited_group is None:
                    self._inherited_group = self.add_argument_group(
                        "transformers.TrainingArguments (inherited)", "See the transformers documentation."
                    )
                self._parse_dataclass_field(self._inherited_group, field)
            else:
                self._parse_dataclass_field(own, field)
        if self._inherited_group is not None:  # keep the inherited group printed after every Prologue group
            self._action_groups.remove(self._inherited_group)
            self._action_groups.append(self._inherited_group)


def _script_description() -> str | None:
    """The running script's module docstring (``examples/train_*.py`` describe themselves there)."""
    main = sys.modules.get("__main__")
    return getattr(main, "__doc__", None)


def parse_config_and_args(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None, description: str | None = None
) -> tuple:
    """Parse ``--config path.yaml`` (optional) and the remaining flags into instances of ``dataclass_types``.

    Unknown keys (in the YAML or on the command line) raise ``ValueError``. ``description`` (default: the running
    script's docstring) heads ``--help``, which lists ``--config`` first, then the Prologue flags grouped per
    dataclass, then the inherited ``TrainingArguments`` (:class:`PrologueArgumentParser`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ValueError("--config needs a YAML file path")
        config_path = argv[index + 1]
        del argv[index : index + 2]
    tokens: list[str] = []
    if config_path is not None:
        with open(config_path) as handle:
            tokens = yaml_to_argv(yaml.safe_load(handle) or {})
    parser = PrologueArgumentParser(dataclass_types, description=description or _script_description())
    *parsed, remaining = parser.parse_args_into_dataclasses(args=tokens + argv, return_remaining_strings=True)
    if remaining:
        raise ValueError(f"unknown arguments: {remaining}")
    return tuple(parsed)


__all__ = ["PrologueArgumentParser", "parse_config_and_args", "yaml_to_argv"]
