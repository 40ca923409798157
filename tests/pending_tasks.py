"""A test fails if a task running zpilot code is destroyed while still pending.

asyncio logs "Task was destroyed but it is pending!" when a task is freed before it has ended. That
happens when its loop was closed without the tasks being cancelled first, which ``asyncio.run`` and
pytest-asyncio's runner both do. Such a task is work zpilot started and nobody ended; the Producer's
idle-time preparation would be one. The message is only logged, so it used to pass unseen. Only tasks
running zpilot's own code count here: grpc's client tasks that a test drops on purpose
(test_stream_leaks.py) are not zpilot's to end.

A task is freed when the garbage collector gets to it. That may be during a later test, so the failure
names the task, and the test it is reported in may not be the one that left it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import zpilot

#: Where zpilot's code is: a task "running at" a file under it is zpilot's.
ZPILOT_DIR = str(Path(zpilot.__file__).resolve().parent) + os.sep
DESTROYED = "Task was destroyed but it is pending!"


class PendingTaskRecorder(logging.Handler):
    """Keeps asyncio's reports of a zpilot task destroyed pending."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(DESTROYED) and ZPILOT_DIR in message:
            self.seen.append(message[:600])


RECORDER = PendingTaskRecorder()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger("asyncio").addHandler(RECORDER)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger("asyncio").removeHandler(RECORDER)


@pytest.fixture(autouse=True)
def no_zpilot_task_left_pending():
    yield
    seen, RECORDER.seen = RECORDER.seen, []
    if seen:
        pytest.fail("a zpilot task was destroyed while pending (its loop closed without ending it):\n"
                    + "\n".join(seen), pytrace=False)
