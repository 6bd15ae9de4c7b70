"""``python -m rkd`` (and ``torchrun -m rkd distill …``) runs the CLI."""

from rkd.cli.app import main

main()
