"""The command-line layer: shared argparse groups (args), logging set-up for
the scripts (logs) and the entry modules run with `python -m centernet.cli.NAME`.
The library below (core, io, model, runtime, report, pipeline, bench) imports
no argparse and prints nothing; it logs through `logging`."""
