"""Placeholder: replaced by the real command."""

from __future__ import annotations

import click


@click.command("snapshot")
def snapshot() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
