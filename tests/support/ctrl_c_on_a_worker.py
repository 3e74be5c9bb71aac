"""`mfm` whose two Ctrl-Cs land on an attempt thread instead of the main thread.

Run as `python -m support.ctrl_c_on_a_worker HOME MFM-ARGS...`. A process-directed SIGINT
may be delivered to any thread; this makes the unlucky case certain (`pthread_kill` to an
`mfm-attempt` thread) so a test can show that the second press is heard while the handlers
are still running. The first press is sent once two attempts are entered, the second once
the main thread is waiting for the attempts in flight (a `shutdown` frame on its stack).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from mfm_dist.cli.main import main
from mfm_dist.events import StateEntered
from mfm_dist.stores.urls import open_stores


def _entered(home: Path) -> int:
    stores = open_stores(None, None, home, read_only=True)
    try:
        rows = stores.events.list_runs()
        if not rows:
            return 0
        return sum(
            isinstance(env.event, StateEntered) for env in stores.events.read_range(rows[0].run_id)
        )
    except Exception:  # the home is not created yet
        return 0
    finally:
        stores.close()


def _an_attempt_thread() -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name.startswith("mfm-attempt"))


def _main_is_in_shutdown() -> bool:
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "shutdown":
            return True
        frame = frame.f_back
    return False


def _press_twice(home: Path) -> None:
    while _entered(home) < 2:
        time.sleep(0.05)
    signal.pthread_kill(_an_attempt_thread().ident or 0, signal.SIGINT)
    while not _main_is_in_shutdown():
        time.sleep(0.01)
    signal.pthread_kill(_an_attempt_thread().ident or 0, signal.SIGINT)


if __name__ == "__main__":
    home = Path(sys.argv[1])
    threading.Thread(target=_press_twice, args=(home,), daemon=True).start()
    sys.argv = ["mfm", "--home", str(home), *sys.argv[2:]]
    main()
