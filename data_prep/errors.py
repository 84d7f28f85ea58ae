"""The errors a person fixes: one base class, so the command line treats them all alike.

Every error of bad input or setup (a config key, a flag, a file, a folder, a store, a checkpoint, a
model file) derives from :class:`UserError` as well as from the builtin it always was (``ValueError``,
``RuntimeError``, ``FileExistsError``), and its message names the file or key and the fix.
``cclray.cli.main`` prints it as ``cclray <command>: error: <message>`` on stderr and exits 2; any other
exception is a bug and keeps its traceback. Imports nothing: every layer may raise these.
"""
from __future__ import annotations


class UserError(Exception):
    """Base of the errors a person fixes; the message says what is wrong and how to fix it."""


class InputError(UserError, ValueError):
    """An input file or folder is unusable; the message names the file and the fix."""
