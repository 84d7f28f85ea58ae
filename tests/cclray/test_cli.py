import subprocess
import sys

from cclray.cli import COMMANDS, build_parser


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys; from cclray.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'ray', 'zarr', 'sklearn', 'onnxruntime') if m in sys.modules]\n"
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout


def test_every_command_module_has_the_contract():
    from cclray.cli import _module

    parser = build_parser([])  # imports every command module
    assert parser is not None
    for name in COMMANDS:
        mod = _module(name)  # cclray/commands/<name with - as _>.py
        assert callable(mod.add_arguments) and callable(mod.run), name


# command, arguments (TMP = a fresh folder), what the one-line message must name
USER_ERRORS = [
    ("phantom", ["--out", "TMP/p", "--spacing", "40"], "spacing"),
    ("prep", ["TMP/nothing", "--out", "TMP/s.zarr"], "TMP/nothing"),
    ("prep", ["TMP", "--out", "TMP/s.zarr", "--splits", "a=x"], "NAME=COUNT"),
    ("constraint", ["TMP/none.zarr", "--contrasts", "all"], "none.zarr"),
    ("export", ["--run", "TMP/norun", "--out", "TMP/m.onnx"], "TMP/norun"),
    ("synthesize", ["--model", "TMP/m.onnx", "--subject", "TMP", "--out", "TMP/o"], "TMP/m.onnx"),
    ("pretrain", ["--store", "TMP/none.zarr", "--out", "TMP/r"], "none.zarr"),
    ("study-pool", ["TMP", "--out", "TMP/pooled"], "TMP: no study_config.json"),
]


def test_one_error_contract(tmp_path, capsys):
    """Every command's user errors: `cclray <command>: error: <message>` on stderr, one line, exit 2;
    nothing on stdout (the commands raise; cli.main alone formats)."""
    import pytest

    from cclray.cli import main

    for command, argv, names in USER_ERRORS:
        argv = [a.replace("TMP", str(tmp_path)) for a in argv]
        if command == "prep" and "--splits" in argv:
            (tmp_path / "x").mkdir(exist_ok=True)
        code = main([command, *argv])
        out, err = capsys.readouterr()
        assert code == 2, (command, argv, err)
        assert err.startswith(f"cclray {command}: error: ") and err.count("\n") == 1, (command, err)
        assert names.replace("TMP", str(tmp_path)) in err and "Traceback" not in err, (command, err)
        assert "error:" not in out, (command, out)
    with pytest.raises(SystemExit) as e:  # argparse's own usage errors exit 2 too
        main(["phantom"])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
