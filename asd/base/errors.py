"""Known errors as one line: every script's entry point runs its ``main`` through ``run_script``.

A known error (a missing or unreadable file or folder, a full disk, a bad audio file, a refused
setting: OSError, ValueError and the audio reader's errors) is printed as ``<script>: error: <what
happened, naming the file, and what to do>`` and the script exits 1, with no traceback. With
``ASD_DEBUG=1`` in the environment the traceback is shown as well. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# set to 1 to see the traceback of a known error too
DEBUG_ENV = "ASD_DEBUG"


def is_known(error: BaseException) -> bool:
    """Whether ``error`` is a user's problem (bad input, missing file, full disk), not a bug."""
    return isinstance(error, (OSError, ValueError)) or type(error).__module__.startswith("soundfile")


def run_script(main: Callable[[], Any], program: str | None = None) -> int:
    """Run a script's ``main()``; its exit status: main's own when it returns one, else 0, or 1 after
    printing a known error in one line on stderr."""
    program = program or Path(sys.argv[0]).name
    try:
        result = main()
    except Exception as error:
        if not is_known(error) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        print(f"{program}: error: {error}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
