"""`python -m ledger ...` is the `potd` command."""

from ledger.cli import main

main()
