"""The `morphtransfer` command. Thin: parses options, calls the library, prints.

Every command is a library function with the same name and arguments, so a notebook can do what
the command does with one import. Bad input raises morphtransfer.errors.InputError, caught once in
``main`` and printed without a traceback. Heavy imports happen inside the commands so that
``morphtransfer --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from morphtransfer.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Carry a galaxy-morphology classifier from one survey to another "
    "(Dominguez Sanchez et al. 2019).",
)
console = Console()


@app.callback()
def _root() -> None:
    """Carry a galaxy-morphology classifier from one survey to another (Dominguez Sanchez et al. 2019)."""


@app.command()
def version() -> None:
    """Print the package version."""
    from morphtransfer import __version__

    console.print(__version__)


# ---- simulate (issue 2) -------------------------------------------------------------------
# ---- end simulate -------------------------------------------------------------------------

# ---- ingest, download (issue 3) -----------------------------------------------------------
# ---- end ingest, download -----------------------------------------------------------------

# ---- train, evaluate (issue 5) ------------------------------------------------------------
# ---- end train, evaluate ------------------------------------------------------------------

# ---- run: the transfer study (issue 4) ----------------------------------------------------
# ---- end run ------------------------------------------------------------------------------

# ---- predict (issue 6) --------------------------------------------------------------------
# ---- end predict --------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point: bad input is one red line, not a traceback."""
    try:
        app()
    except InputError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
