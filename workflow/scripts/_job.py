"""What the job scripts that call fm2s's library share: its errors end as one line.

`fm2s` on the command line ends any input or output fault (a full disk, an input changed or
gone, a store that cannot be written) with one line naming the file and the problem; a job
script calling the library directly would print Python's traceback instead (62 lines into the
job's log for a full disk). `one_line_errors` gives the jobs the command line's rule: one line
``fm2s: error: <file>: <problem>`` in the log, exit status 2 (130 or 143 for SIGINT or
SIGTERM: a scheduler's time limit or scancel), and the temporaries of fm2s.outputs removed.
"""

import signal
import sys
from contextlib import contextmanager

EXIT_BAD_INPUT = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is, so that temporaries are removed as on Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated


def _where(error: OSError, output: str) -> str:
    """The file an OSError is about: the job's output when the error names none or names a
    file inside the output's hidden temporary (a path the user never gave)."""
    name = error.filename
    if name is None or ("/." in f"/{name}" and ".tmp-" in str(name)):
        return output
    return str(name)


@contextmanager
def one_line_errors(output: str):
    """Run the job's body; end a fault in one line naming the file and exit non-zero."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except (FileNotFoundError, ValueError) as error:  # StackError, OutputError, ...
        if isinstance(error, FileNotFoundError) and error.filename is not None:
            print(f"fm2s: error: {error.filename}: {error.strerror or error}", file=sys.stderr)
        else:
            print(f"fm2s: error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as error:  # a full disk, a folder made read-only while running
        print(f"fm2s: error: {_where(error, output)}: {error.strerror or error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Terminated:
        print(f"fm2s: {output}: stopped by SIGTERM; no partial output was left", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print(f"fm2s: {output}: interrupted; no partial output was left", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
