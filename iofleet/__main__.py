"""`python -m iofleet`: the same commands as the `iofleet` console script."""

from iofleet.cli import app

app(prog_name="iofleet")
