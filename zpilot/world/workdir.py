"""A world's private directory: its manifests, logs, Unix sockets, bootstraps, CA and node keys.

The directory is named after the world (``zpilot-world-zw<pid>-<n>-XXXXXXXX`` in the temporary
directory, mode 0700), so that, like the world's namespaces, one left behind by a builder that
was killed (SIGKILL, the OOM killer) is recognised by its dead pid and swept by the next world.
It holds private keys (the CA's; with static bootstraps, workloads' too), so it never outlives
its world unless asked to: a world that keeps its directory (``keep_workdir``, or a ``workdir``
of the caller's) still removes the keys at teardown, and marks the directory as kept so that
no sweep takes the logs away.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from .netns import owner_is_gone

log = logging.getLogger("zpilot.world")

DIR_PREFIX = "zpilot-world-"
#: The world's CA (``zpilot serve --ca-dir``, ``zpilot render --ca-dir``): root key included.
CA_DIR = "ca"
#: Each node's ADS credential (``zpilot bootstrap --credential-dir``): the node's private key included.
CREDENTIALS_DIR = "xds-credentials"
#: Written into a directory its world kept on purpose; the sweep leaves such a directory alone.
KEPT_MARKER = ".kept"


def create(world_prefix: str) -> Path:
    """A new private directory for the world named ``world_prefix`` (``zw<pid>-<n>``)."""
    return Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{world_prefix}-"))


def remove(path: Path) -> str | None:
    """Remove the directory; returns an error message if it could not be removed."""
    for _attempt in range(3):  # a dying child may still be closing a file in it
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return None
        time.sleep(0.2)
    return f"could not remove {path}"


def keep(path: Path, secrets: list[Path]) -> str | None:
    """Keep the directory's logs and manifests but not ``secrets`` (files or directories holding
    private keys); returns an error message if one could not be removed."""
    for secret in secrets:
        if secret.is_dir() and not secret.is_symlink():
            error = remove(secret)
            if error:
                return error
        else:
            secret.unlink(missing_ok=True)
    (path / KEPT_MARKER).write_text("kept on request (keep_workdir); the private keys were removed at teardown\n")
    return None


def sweep_abandoned(root: Path | None = None) -> list[Path]:
    """Remove world directories (in ``root``, default the temporary directory) whose world's
    process is gone and that were not kept: what a SIGKILLed run left, keys included.

    Only real directories owned by this user and named by a world are considered; symlinks and
    anybody else's files are never followed or touched."""
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    for entry in sorted(root.glob(DIR_PREFIX + "*")):
        if not owner_is_gone(entry.name[len(DIR_PREFIX):]):
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or (entry / KEPT_MARKER).exists():
            continue
        if remove(entry) is None:
            removed.append(entry)
    if removed:
        log.warning("removed %d directory(ies) left by an earlier world: %s",
                    len(removed), ", ".join(str(p) for p in removed))
    return removed
