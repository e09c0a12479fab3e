"""Placeholder: replaced by the real command."""

from __future__ import annotations

import click


@click.command("fuse-check")
def fuse_check() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
