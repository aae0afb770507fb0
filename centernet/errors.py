"""One-line errors for users, and the CLI wrapper that prints them."""
import functools
import sys


class UserError(Exception):
    """A problem with the user's input (a file, an argument): printed as one
    line, no traceback. Name the file and the problem in the message."""


def cli(main):
    """Decorate a script's main(): UserError -> 'error: ...' and exit 2,
    Ctrl-C -> 'interrupted' and exit 130. Finished outputs are already safe
    because every writer renames a complete temp file into place."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: finished outputs are kept; re-run to resume", file=sys.stderr)
            sys.exit(130)
    return wrapper
