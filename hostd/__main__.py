"""`python -m hostd` runs the same CLI as the `hostd` script."""

from hostd.cli import run

run()
