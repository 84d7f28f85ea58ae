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
    parser = build_parser([])  # imports every command module
    assert parser is not None
    import importlib
    for name in COMMANDS:
        mod = importlib.import_module(f"cclray.commands.{name}")
        assert callable(mod.add_arguments) and callable(mod.run), name
