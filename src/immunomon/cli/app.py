"""The typer application objects that the command modules register on."""

import typer

app = typer.Typer(
    name="immunomon",
    help="Clinical-trial immunomonitoring: FCS files + study manifest -> trial report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
fcs_app = typer.Typer(help="Inspect and convert FCS files.", no_args_is_help=True)
app.add_typer(fcs_app, name="fcs")
