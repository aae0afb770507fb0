"""One-line errors for users, the CLI wrapper that prints them, and Ctrl-C
handling (scripts and their worker processes)."""
import contextlib
import errno
import functools
import os
import signal
import sys
import threading

from centernet.environment import missing_module_error


class UserError(Exception):
    """A problem with the user's input (a file, an argument): printed as one
    line, no traceback. Name the file and the problem in the message."""


class WriteError(UserError):
    """An output file could not be written (disk full, quota, read-only file
    system, no permission, a missing folder). Later writes to the same place
    would fail the same way, so a stage stops at the first one."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the interrupted stage leaves behind (`kept`) and how
    to go on from there (`resume`), printed after 'interrupted: '."""

    def __init__(self, kept, resume=None):
        super().__init__(kept, resume)
        self.kept, self.resume = kept, resume

    def __str__(self):
        return interrupted_message(self.kept, self.resume)


# A driver that runs the scripts as its stages (run_all.sh) sets this to its
# own way of going on, which replaces each script's: the user then reads one
# resume hint, the one for the command they typed.
RESUME_HINT_ENV = "CENTERNET_RESUME_HINT"


def interrupted_message(kept, resume=None):
    """'KEPT; RESUME', with RESUME_HINT_ENV, when set, in place of `resume`."""
    resume = os.environ.get(RESUME_HINT_ENV) or resume
    return "; ".join(part for part in (kept, resume) if part)


_WRITE_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EFBIG: "write to a file system that takes files this large",
    errno.EROFS: "choose a folder you can write to",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
}


def write_error(path, err):
    """The WriteError for OSError `err` raised while writing `path`: one line
    naming the file, the system's reason and what to do about it."""
    reason = err.strerror or str(err) or type(err).__name__
    hint = _WRITE_HINTS.get(err.errno)
    return WriteError(f"{path}: cannot write ({reason})" + (f"; {hint}" if hint else ""))


def _interrupt_once(signum, frame):
    # The first Ctrl-C stops the script; further ones while it cleans up
    # (stops workers, saves what is finished, exits) are ignored, so they
    # cannot break that clean-up with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_blocked():
    """Hold back Ctrl-C while worker processes are started in the block (in
    the main thread).

    - The workers start with SIGINT blocked: a signal mask survives fork and
      exec, so a Ctrl-C sent to the whole process group (as a terminal does)
      cannot kill one with a traceback during its start-up, before its
      initializer ignores SIGINT.
    - This process is not interrupted half-way through starting one (a
      worker left without its start-up data fails with a traceback; one
      left unregistered waits for work forever and keeps the program from
      exiting). The mask alone does not do that: another thread (tqdm's
      monitor, say) may take the signal and Python then runs the handler
      in the main thread anyway. So the Python handler only notes a Ctrl-C
      meanwhile, and it is raised when the block ends.
    Threads started in the block keep SIGINT blocked, which is harmless."""
    # multiprocessing's resource tracker unblocks SIGINT in this process when
    # it starts (on the first queue or lock): start it first.
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    with sigint_deferred():
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def sigint_deferred():
    """In the main thread, a Ctrl-C inside the block is only noted, and
    raised (by the handler it would have met) when the block ends: for a
    few steps that must not be split, such as starting a thread and
    registering it where the interpreter's exit stops it."""
    handler, noted = None, []
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        if callable(handler):
            signal.signal(signal.SIGINT, handler)
            if noted:
                handler(signal.SIGINT, None)  # raises KeyboardInterrupt, as the Ctrl-C would have


DEFAULT_INTERRUPTED = "finished outputs are kept"


@contextlib.contextmanager
def quiet_interrupt(message="nothing was done yet", resume=None):
    """Around a script's slow top-level imports (torch takes a second or
    more), before cli() takes over: a Ctrl-C there ends the program with
    'interrupted: MESSAGE' and exit status 130, not a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_message(message, resume)}", file=sys.stderr)
        sys.exit(130)


def cli(main=None, *, interrupted=DEFAULT_INTERRUPTED, resume=None):
    """Decorate a script's main() (as @cli or @cli(interrupted=..., resume=...)):
    UserError, or a package of requirements.txt that is not installed ->
    'error: ...' and exit 2; Ctrl-C -> 'interrupted: ...' and exit 130, with
    the message of an Interrupted raised by the library (what was kept, how to
    go on) or else `interrupted` and `resume`, which each script words
    truthfully for itself. Finished outputs are already safe because every
    writer renames a complete temp file into place."""
    def decorate(main):
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            previous = None
            if threading.current_thread() is threading.main_thread() \
                    and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                previous = signal.signal(signal.SIGINT, _interrupt_once)
            # Run as a script, the process ends right after main(): a Ctrl-C
            # then would only turn a finished run into a signal death or
            # break the clean-up. Called from other code, that code gets its
            # handler back.
            after = signal.SIG_IGN if main.__module__ == "__main__" else previous
            try:
                result = main(*args, **kwargs)
            except UserError as e:
                _restore(previous, after)
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            except ModuleNotFoundError as e:
                # a package of requirements.txt imported late, inside the work: the same
                # one line as centernet.environment.require gives at the start
                message = missing_module_error(e)
                if message is None:
                    _restore(previous, previous)
                    raise
                _restore(previous, after)
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt as e:
                _restore(previous, after)
                if isinstance(e, Interrupted) and e.kept:
                    message = str(e)
                else:
                    message = interrupted_message(interrupted, resume)
                print(f"interrupted: {message}", file=sys.stderr)
                sys.exit(130)
            except BaseException:
                _restore(previous, previous)
                raise
            _restore(previous, after)
            return result
        return wrapper
    return decorate(main) if main is not None else decorate


def _restore(previous, handler):
    """Put `handler` in place of _interrupt_once, if the wrapper installed it."""
    if previous is not None:
        signal.signal(signal.SIGINT, handler)
