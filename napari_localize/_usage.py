"""The command line's usage error, in a module of its own (no numpy, no numba), so that ``python -m
napari_localize.cli`` (where cli.py is ``__main__``) and the modules it imports raise and catch one class."""


class CliError(Exception):
    """A command-line usage error: printed as one line, exit status 2."""
