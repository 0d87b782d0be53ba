"""Messages name parameters: by the library's keyword from Python (``jsonl -: ...``), by their flag on the
command line (``--jsonl -: ...``); every parameter an error can name has a flag."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
from conftest import IMAGES

from campp_cli.errors import UsageError

CHELSEA = IMAGES / "chelsea.png"

#: Parameters only the library has, each with why the command line never names it.
LIBRARY_ONLY = {
    "command": "Run's first argument; on the command line a subcommand, checked by click",
    "preprocessing": "load_classifier's preprocessing=; the CLI gives --input-size, --mean, --std, --resize",
    "differentiable": "explain's differentiable=: maps as tensors for training, which no command writes",
    "top": "explain_top's k; on the command line -l topK, checked as --label",
}


def cases(tmp_path: Path):
    """(command, files, keyword arguments, CLI arguments, the Python message, the CLI message)."""
    out, missing = tmp_path / "o", tmp_path / "missing.png"
    return [
        ("classify", [CHELSEA], dict(jsonl="-", output_dir=out), ["--jsonl", "-", "--output-dir", out],
         "jsonl -: give a file name (/dev/stdout writes to standard output)",
         "--jsonl -: give a file name (/dev/stdout writes to standard output)"),
        ("classify", [missing], dict(output_dir=out), ["--output-dir", out],
         f"files {missing}: no such file", f"-f {missing}: no such file"),
        ("classify", [CHELSEA], dict(output="a/b.jpeg", output_dir=out), ["-o", "a/b.jpeg", "--output-dir", out],
         "output 'a/b.jpeg': give a file name without folders (use output_dir for the folder)",
         "-o 'a/b.jpeg': give a file name without folders (use --output-dir for the folder)"),
        ("classify", [CHELSEA], dict(jsonl=tmp_path / "a.html", report=tmp_path / "a.html", output_dir=out),
         ["--jsonl", tmp_path / "a.html", "--report", tmp_path / "a.html", "--output-dir", out],
         f"jsonl {tmp_path / 'a.html'} and report {tmp_path / 'a.html'} are the same file: give each output a "
         f"name of its own",
         f"--jsonl {tmp_path / 'a.html'} and --report {tmp_path / 'a.html'} are the same file: give each output "
         f"a name of its own"),
        ("classify", [CHELSEA], dict(labels_from_folders=True, output_dir=out), ["--labels-from-folders",
                                                                                  "--output-dir", out],
         "labels_from_folders marks right and wrong predictions in a report: give report FILE.html too (or label "
         "true to explain each image's true class)",
         "--labels-from-folders marks right and wrong predictions in a report: give --report FILE.html too (or -l "
         "true to explain each image's true class)"),
        ("evaluate", [CHELSEA], dict(deltas="0,1.5"), ["--delta", "0,1.5"],
         "deltas 0,1.5: give numbers in [0, 1), comma-separated (e.g. 0,0.25,0.5)",
         "--delta 0,1.5: give numbers in [0, 1), comma-separated (e.g. 0,0.25,0.5)"),
        ("evaluate", [CHELSEA], dict(plot=tmp_path / "p.jpeg"), ["--plot", tmp_path / "p.jpeg"],
         f"plot {tmp_path / 'p.jpeg'}: give a .png file name", f"--plot {tmp_path / 'p.jpeg'}: give a .png file name"),
    ]


def test_python_names_the_keyword_and_the_cli_the_flag(tmp_path, run_cli):
    from campp_cli.run.run import Run

    for command, files, params, args, python, cli in cases(tmp_path):
        with pytest.raises(UsageError) as info:
            Run(command, files, **params)
        assert str(info.value) == python
        code, _, err = run_cli(command, *[a for f in files for a in ("-f", f)], *args)
        assert code == 2 and err.strip().splitlines() == [f"campp: error: {cli}"], err


def test_an_error_keeps_its_parameters_across_processes():
    exc = UsageError("{jsonl} a and {report} a are the same file", param="jsonl", value="a", also=("report",))
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.param, copy.value, copy.also) == ("jsonl", "a", ("report",))
    assert copy.worded({"jsonl": "--jsonl", "report": "--report"}) == "--jsonl a and --report a are the same file"
    assert str(copy) == "jsonl a and report a are the same file"
    plain = UsageError("the only field a template may use is {stem}", param="output", value="'x'")
    assert plain.worded({"output": "-o"}) == "-o 'x': the only field a template may use is {stem}"


def _named_parameters() -> dict[str, list[str]]:
    """Every parameter name written as a literal ``param="..."`` or in ``also=(...)`` in campp_cli, and
    the first argument of the helpers that take one (check_writable, check_name_length)."""
    found: dict[str, list[str]] = {}
    root = Path(__file__).resolve().parents[1] / "campp_cli"
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            literals = [kw.value for kw in node.keywords if kw.arg == "param"]
            literals += [e for kw in node.keywords if kw.arg == "also" and isinstance(kw.value, ast.Tuple)
                         for e in kw.value.elts]
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("check_writable", "check_name_length") and node.args:
                literals.append(node.args[0])
            for lit in literals:
                if isinstance(lit, ast.Constant) and isinstance(lit.value, str):
                    found.setdefault(lit.value, []).append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_every_parameter_an_error_names_has_a_flag():
    from campp_cli.cli.main import flags

    named = _named_parameters()
    assert {"jsonl", "report", "files", "output", "output_dir", "deltas", "label"} <= set(named)
    known = flags()
    missing = {name: where for name, where in named.items() if name not in known and name not in LIBRARY_ONLY}
    assert not missing, f"parameters named in errors without a CLI flag (add one, or to LIBRARY_ONLY): {missing}"
