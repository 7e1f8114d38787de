"""``connectome --help`` and every ``connectome COMMAND --help``: exit 0, examples, exit codes,
consistent option names."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from workflows.cli import EXIT_CODES, build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


COMMANDS = sorted(_subcommands())


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0, f"{argv} exited {exc.value.code}"
    return capsys.readouterr().out


def test_the_commands_are_all_there():
    assert set(COMMANDS) >= {"sample", "ingest", "run", "evaluate", "report", "export", "view"}


def test_top_level_help_lists_commands_examples_and_exit_codes(capsys):
    out = _help(["--help"], capsys)
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), f"--help does not list {command}"
    assert "examples:" in out.lower()
    assert "exit codes:" in out and EXIT_CODES in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_has_examples(command, capsys):
    out = _help([command, "--help"], capsys)
    assert "Examples" in out or "examples:" in out, f"connectome {command} --help shows no examples"
    examples = out.lower().split("examples:", 1)[1].split("exit codes:", 1)[0]
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert lines and all(line.startswith(f"connectome {command}") for line in lines), lines
    assert EXIT_CODES in out, f"connectome {command} --help does not document the exit codes"
    # RawDescriptionHelpFormatter keeps the examples one per line; descriptions are pre-wrapped.
    assert max(len(line) for line in out.split("examples:")[0].splitlines()) <= 100


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_parse(command, capsys):
    """Every example in a command's help is accepted by the parser."""
    out = _help([command, "--help"], capsys)
    examples = out.split("examples:", 1)[1].split("exit codes:", 1)[0]
    parser = build_parser()
    for line in examples.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            args = parser.parse_args(line.split()[1:])
            assert args.command == command


def test_option_names_are_consistent():
    """One spelling per concept: the same option means the same thing in every command."""
    seen: dict[str, set[str]] = {}
    for name, sub in _subcommands().items():
        for action in sub._actions:
            for option in action.option_strings:
                assert option == "-h" or option.startswith("--"), f"{name}: short option {option}"
                assert "_" not in option, f"{name}: {option} uses '_' (use '-')"
                seen.setdefault(option, set()).add(name)
    # A run directory is always the positional RUN_DIR, output paths are --output, replacing is
    # --overwrite and never --force/--rebuild/--out.
    for banned in ("--out", "--force", "--rebuild", "--run-dir", "--outdir", "--output-dir"):
        assert banned not in seen, f"{banned} used by {sorted(seen[banned])}"
    for name, sub in _subcommands().items():
        positional = [a for a in sub._actions if not a.option_strings and a.dest == "run_dir"]
        for action in positional:
            assert action.metavar == "RUN_DIR", f"{name}: run_dir shown as {action.metavar!r}"


def test_readme_documents_the_exit_codes_and_view():
    text = README.read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"\b{code}\b", section), f"README's command-line section lacks exit code {code}"
    assert "connectome view" in text
