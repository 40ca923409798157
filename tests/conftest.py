"""Settings every test process needs before anything imports grpc, and the shared fixtures.

The world (zpilot/world) starts its pods, Envoys and ``zpilot serve`` with ``preexec_fn`` (so they die
with the test), which makes Python ``fork()`` and run code before ``exec``. A test process that has
used grpc in-process (an ADS client, an in-process control plane) has grpc's poller threads running;
with grpc's fork support on, its at-fork child handler then resets the event engine in the child,
which aborts (``epoll_wait error: Bad file descriptor``, SIGABRT) before the child ever execs. None of
the test processes forks to keep using grpc in the child, so fork support is turned off here.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

#: Fixtures every test directory may use: ``apiserver``, the in-process Kubernetes API server; and a check
#: after every test that no zpilot task was destroyed while pending (tests/pending_tasks.py).
pytest_plugins = ["tests.kube.apiserver.fixtures", "tests.pending_tasks"]
