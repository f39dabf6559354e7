"""The ``e2urec`` Typer app and what its commands share: consoles, clear errors, tables."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Efficient and effective unlearning for LLM-based recommenders (E2URec).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def friendly_errors(fn):
    """Expected failures (bad files, bad options, missing paths) end in one clear line, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from e2urec.backbones import BackboneError
        from e2urec.data import DataFormatError

        try:
            return fn(*args, **kwargs)
        except (
            DataFormatError,
            BackboneError,
            FileExistsError,
            FileNotFoundError,
            LookupError,
            ValueError,
            RuntimeError,
        ) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            # soft_wrap: never break a path or a file:line in two
            err.print(
                f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None

    return wrapper


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    for col in ("split", "AUC", "GAUC", "ACC", "LogLoss"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name, m in rows.items():
        gauc = f"{m['gauc']:.4f}" if "gauc" in m else "-"
        table.add_row(name, f"{m['auc']:.4f}", gauc, f"{m['acc']:.4f}", f"{m['logloss']:.4f}")
    return table


def note_other_data(model, manifest: dict, prepared, consequence: str = "") -> None:
    """Say so (without stopping) when a model was trained on other prepared data than this."""
    trained_on = manifest.get("data", {}).get("data_hash")
    if trained_on and trained_on != prepared.data_hash:
        err.print(
            f"[yellow]note:[/] {model} was trained on other data ({trained_on[:12]}), "
            f"this is {prepared.data_hash[:12]}{consequence}"
        )
