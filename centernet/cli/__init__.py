"""The command-line layer: shared argparse groups (args), logging set-up for
the scripts (logs) and the entry modules run with `python -m centernet.cli.NAME`.
The library below (core, io, model, runtime, report, pipeline, bench) imports
no argparse and prints nothing; it logs through `logging`.

Importing it first checks that this Python has the packages every script
needs (one error line saying how to use the project's .venv, not a
traceback), so each script imports centernet.cli before any third-party
module."""
from centernet.environment import COMMON, require

require(*COMMON)
