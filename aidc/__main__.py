"""The `aidc` command (and `python -m aidc`): the CLI, imported inside Ctrl-C's handling.

Until a command handles Ctrl-C itself (`aidc run` once it serves), SIGINT ends it as it ends
any program: nothing said, no traceback, and killed by SIGINT for the shell that waits on it.
Importing the CLI alone takes 0.5 s (pydantic, numpy), and reading a site file 1.2 s at
10,000 racks: hence a module that imports nothing else first."""

import contextlib
import os
import signal
import sys


def console() -> None:
    try:
        from aidc.cli import console as run

        run()  # ends the process
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    console()
