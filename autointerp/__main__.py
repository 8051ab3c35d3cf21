"""`python -m autointerp`: the command line."""

from autointerp.cli import main

main()
