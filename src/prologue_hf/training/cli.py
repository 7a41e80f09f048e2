"""YAML + command-line configuration for the training examples (``--config file.yaml`` then ``--key value``).

The YAML file is a flat mapping of dataclass fields (any of the dataclasses handed to ``HfArgumentParser``). It is
turned into command-line tokens placed *before* the real command line, so a flag given on the command line wins.
Mappings (e.g. ``tokenizer_overrides: {hidden_size: 64}``) become JSON strings; lists become repeated values.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import yaml
from transformers import HfArgumentParser


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


def parse_config_and_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse ``--config path.yaml`` (optional) and the remaining flags into instances of ``dataclass_types``.

    Unknown keys (in the YAML or on the command line) raise ``ValueError``.
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
    parser = HfArgumentParser(tuple(dataclass_types))
    *parsed, remaining = parser.parse_args_into_dataclasses(args=tokens + argv, return_remaining_strings=True)
    if remaining:
        raise ValueError(f"unknown arguments: {remaining}")
    return tuple(parsed)


__all__ = ["parse_config_and_args", "yaml_to_argv"]
