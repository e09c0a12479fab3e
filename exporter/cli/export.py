"""Placeholder: replaced by the real command."""

from __future__ import annotations

import click


@click.command("export")
def export() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
