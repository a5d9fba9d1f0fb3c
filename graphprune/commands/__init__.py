"""CLI commands, one module per command family.  Each module exposes ``register(cli)``."""

from __future__ import annotations

import importlib

import click

_MODULES = ["analyze", "shrink", "targets", "sweep"]


def register_all(cli: click.Group) -> None:
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"graphprune.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"graphprune.commands.{name}":
                continue  # command family not built yet
            raise
        mod.register(cli)
