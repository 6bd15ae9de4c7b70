"""The ``rkd`` command line: thin Typer commands over the library; Rich output and exit codes live here."""
