"""CLI verbs run/report/demo: user errors exit 2 with a one-line message, no traceback."""

import sys

import pytest

from immunomon.cli import main


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``immunomon ARGS`` in-process; returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["immunomon", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_run_missing_study_is_a_user_error(tmp_path, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "run", str(tmp_path / "nowhere"),
                        "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2
    assert "nowhere" in err and "Traceback" not in err


def test_report_needs_a_run_directory(tmp_path, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 2
    assert "not a run directory" in err


def test_verbs_are_registered(monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "--help")
    assert code == 0
    assert all(verb in out for verb in ("run", "demo", "report"))
