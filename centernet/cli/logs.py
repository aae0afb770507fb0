"""Logging for the scripts, set up in one place.

The library logs through `logging.getLogger(__name__)` (loggers under
"centernet") with the prefixes its messages have always had ("warning: ",
"error: ", "note: "); each script's main calls setup_logging() once.
Messages are printed plainly (no "INFO:centernet..." prefix): warnings and
errors on stderr, the rest on `info_stream` (stderr, or stdout for the
scripts whose library lines have always gone there).

Every line goes through tqdm.write, as tqdm.contrib.logging's
logging_redirect_tqdm does, so a progress bar on the same terminal is
cleared and redrawn around it, not broken. (logging_redirect_tqdm itself
keeps one console handler per logger, so it cannot send warnings and
information to different streams; this handler does its work at all times.)
"""
import logging
import sys

from tqdm import tqdm

LOGGER = "centernet"


class ConsoleHandler(logging.Handler):
    """Plain messages on the console through tqdm.write: records of level
    WARNING and above on stderr, the others on `info_stream`; the stream is
    looked up as each record is written (tests swap sys.stdout and sys.stderr)."""

    def __init__(self, info_stream="stderr"):
        super().__init__()
        self.info_stream = info_stream
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record):
        try:
            stream = getattr(sys, "stderr" if record.levelno >= logging.WARNING else self.info_stream)
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            self.handleError(record)


def setup_logging(verbose=False, info_stream="stderr"):
    """Route the library's log records to the console: INFO (DEBUG with
    verbose) and up; warnings and errors to stderr, the rest to `info_stream`
    ("stderr" or "stdout"). Calling it again replaces the earlier set-up."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(ConsoleHandler(info_stream))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logger
