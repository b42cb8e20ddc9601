"""Run many ``srsweep`` command lines in one Python process (one torch import, not one each).

``python tests/cli_batch.py CASES.json`` reads a list of argv lists and prints a JSON list of
``{"rc", "stdout", "stderr"}``. Each case's stdout and stderr are captured at the file
descriptor level, so what C code or a logging handler bound at import writes is caught too.
Only for cases that fail before Ray starts: the process state carries over between cases.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def _run(argv: list[str]) -> dict:
    from sweeper.cli import main

    start = time.monotonic()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001  (what main let through: a traceback, as a user sees)
            import traceback

            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
        out.seek(0), err.seek(0)
        return {
            "rc": rc,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
            "seconds": time.monotonic() - start,
        }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    # Imports first (a refused run imports what `run` needs), so a case's seconds time its own
    # work: the alias bombs must take < 2 s.
    _run(["run", "/nonexistent/sweep.yaml"])
    results = [_run(argv) for argv in cases]
    sys.stdout.write(json.dumps(results))
