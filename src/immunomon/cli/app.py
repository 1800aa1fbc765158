"""The typer application objects that the command modules register on."""

import typer

app = typer.Typer(
    name="immunomon",
    help="Clinical-trial immunomonitoring: FCS files + study manifest -> trial report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
def parse_set(pairs: list[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` options as a dict (later pairs win); a pair without ``=`` is a
    :class:`~immunomon.errors.UserError`."""
    from immunomon.errors import UserError

    out, bad = {}, []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            bad.append(f"--set {pair}: expected KEY=VALUE, e.g. --set analysis.min_patients=3")
            continue
        out[key.strip()] = value.strip()
    if bad:
        raise UserError(bad)
    return out


#: The repeatable ``--set KEY=VALUE`` option of the verbs that read a study.
SET_HELP = ("Override a study.yaml setting for this command, e.g. --set analysis.min_patients=3 "
            "(repeatable; dotted path, YAML value).")


fcs_app = typer.Typer(help="Inspect and convert FCS files.", no_args_is_help=True)
app.add_typer(fcs_app, name="fcs")
