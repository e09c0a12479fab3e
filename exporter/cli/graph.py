"""Placeholder: replaced by the real command."""

from __future__ import annotations

import click


@click.command("graph")
def graph() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
