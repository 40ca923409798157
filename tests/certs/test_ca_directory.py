"""The CA directory's traps (issue 11, point 7), each reproduced for real: a read-only mount, a
full disk during the first creation, a creation killed half-way, a reload of an emptied directory,
and ``zpilot serve`` without ``--ca-dir``.

Mounts happen in a private mount namespace (``unshare --mount``) of a child process, so the test
session's view of the filesystem never changes and nothing needs unmounting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zpilot.certs import CertificateAuthority, CertificateAuthorityError
from zpilot.certs.storage import LOCK_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE, STAGING_DIR

REPO = Path(__file__).resolve().parents[2]

needs_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None,
    reason="needs root, unshare and mount (a private mount namespace)",
)


def in_private_mount_namespace(script: str, *args: str) -> dict:
    """Run ``script`` (Python) in a child with its own mount namespace; it prints one JSON object."""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script, *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def kubernetes_secret_layout(source: Path, target: Path) -> None:
    """What kubelet mounts for a Secret: files in a timestamped directory, ``..data`` pointing at
    it, and one symlink per key through ``..data`` (no lock file, nothing else)."""
    stamp = target / "..2024_06_01_12_00_00.000000001"
    stamp.mkdir(parents=True)
    for name in (ROOT_CERT_FILE, ROOT_KEY_FILE):
        shutil.copy(source / name, stamp / name)
        (stamp / name).chmod(0o400)
        (target / name).symlink_to(f"..data/{name}")
    (target / "..data").symlink_to(stamp.name)


READ_ONLY = r"""
import errno, json, os, subprocess, sys
from zpilot.certs import CertificateAuthority, CertificateAuthorityError
directory = sys.argv[1]
subprocess.run(["mount", "--bind", directory, directory], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
try:  # the mount must really refuse writes, root or not, or this test proves nothing
    open(os.path.join(directory, "probe"), "w")
    refused = None
except OSError as exc:
    refused = errno.errorcode[exc.errno]
try:
    ca = CertificateAuthority.load_or_create(directory)
    result = {"fingerprint": ca.fingerprint, "reloaded": ca.reload().fingerprint}
except CertificateAuthorityError as exc:
    result = {"error": str(exc)}
print(json.dumps({"refused": refused, **result}))
"""


@needs_mounts
def test_complete_ca_on_a_read_only_secret_mount_loads(tmp_path):
    made = CertificateAuthority.load_or_create(tmp_path / "made")
    secret = tmp_path / "secret"
    kubernetes_secret_layout(tmp_path / "made", secret)
    result = in_private_mount_namespace(READ_ONLY, str(secret))
    assert result["refused"] == "EROFS"
    assert result.get("error") is None, result["error"]
    assert result["fingerprint"] == result["reloaded"] == made.fingerprint
    assert not (secret / LOCK_FILE).exists()


@needs_mounts
def test_empty_read_only_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = in_private_mount_namespace(READ_ONLY, str(tmp_path / "empty"))
    assert result["refused"] == "EROFS"
    assert "error" in result, result
    assert str(tmp_path / "empty") in result["error"] and "Read-only file system" in result["error"]


FULL_DISK = r"""
import json, os, subprocess, sys
from zpilot.certs import CertificateAuthority, CertificateAuthorityError
mount_point = sys.argv[1]
# one page: the first file written fits, the second does not
subprocess.run(["mount", "-t", "tmpfs", "-o", "nr_blocks=1,mode=0700", "tmpfs", mount_point], check=True)
directory = os.path.join(mount_point, "ca")
try:
    CertificateAuthority.load_or_create(directory)
    error = None
except CertificateAuthorityError as exc:
    error = str(exc)
left = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
subprocess.run(["mount", "-o", "remount,nr_blocks=256", mount_point], check=True)  # space freed
try:
    ca = CertificateAuthority.load_or_create(directory)
    later = {"fingerprint": ca.fingerprint, "again": CertificateAuthority.load_or_create(directory).fingerprint}
except CertificateAuthorityError as exc:
    later = {"later_error": str(exc)}
print(json.dumps({"error": error, "left": left, "files": sorted(os.listdir(directory)), **later}))
"""


@needs_mounts
def test_disk_full_during_first_creation_leaves_nothing_half_made(tmp_path):
    (tmp_path / "disk").mkdir()
    result = in_private_mount_namespace(FULL_DISK, str(tmp_path / "disk"))
    assert result["error"] is not None and "No space left on device" in result["error"], result
    assert [name for name in result["left"] if name != LOCK_FILE] == [], "a half-made CA was left behind"
    assert result.get("later_error") is None, result["later_error"]
    assert result["fingerprint"] == result["again"]
    assert [name for name in result["files"] if name != LOCK_FILE] == [ROOT_CERT_FILE, ROOT_KEY_FILE]


def test_creation_killed_between_the_two_renames_is_finished_at_the_next_start(tmp_path):
    made = CertificateAuthority.load_or_create(tmp_path / "made")
    d = tmp_path / "ca"
    (d / STAGING_DIR).mkdir(parents=True)
    shutil.copy(tmp_path / "made" / ROOT_KEY_FILE, d / ROOT_KEY_FILE)  # renamed into place first
    shutil.copy(tmp_path / "made" / ROOT_CERT_FILE, d / STAGING_DIR / ROOT_CERT_FILE)  # still staged
    assert CertificateAuthority.load_or_create(d).fingerprint == made.fingerprint
    assert not (d / STAGING_DIR).exists()


def test_creation_killed_before_any_rename_is_discarded(tmp_path):
    d = tmp_path / "ca"
    (d / STAGING_DIR).mkdir(parents=True)
    (d / STAGING_DIR / ROOT_KEY_FILE).write_bytes(b"-----BEGIN PRIV")  # cut short: never fsynced
    ca = CertificateAuthority.load_or_create(d)
    assert not (d / STAGING_DIR).exists()
    assert CertificateAuthority.load_or_create(d).fingerprint == ca.fingerprint


def test_a_lone_key_without_a_staged_certificate_is_still_refused(tmp_path):
    d = tmp_path / "ca"
    CertificateAuthority.load_or_create(d)
    (d / ROOT_CERT_FILE).unlink()
    (d / STAGING_DIR).mkdir()  # an empty leftover does not make the pair whole
    with pytest.raises(CertificateAuthorityError, match="root-cert.pem is missing"):
        CertificateAuthority.load_or_create(d)


def test_reload_of_an_emptied_directory_fails_instead_of_making_a_new_root(tmp_path):
    d = tmp_path / "ca"
    ca = CertificateAuthority.load_or_create(d)
    (d / ROOT_CERT_FILE).unlink()
    (d / ROOT_KEY_FILE).unlink()
    with pytest.raises(CertificateAuthorityError, match="root-cert.pem: cannot read"):
        ca.reload()  # the running CA is kept; a new root would break every node's mTLS
    assert not (d / ROOT_KEY_FILE).exists()


# -- zpilot serve without --ca-dir ------------------------------------------------------------


def serve_startup_log(tmp_path: Path, *extra: str) -> str:
    """Start ``zpilot serve`` on Unix sockets, wait until its debug API listens, stop it; its log."""
    debug_socket, log = tmp_path / "debug.sock", tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zpilot.cli", "serve", "--manifests", str(REPO / "examples" / "article"),
             "--xds-address", f"unix:{tmp_path / 'xds.sock'}", "--debug-address", f"unix:{debug_socket}",
             "--metrics-address", f"unix:{tmp_path / 'metrics.sock'}", *extra],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        deadline = time.monotonic() + 120  # only against a hang: serving normally takes a second or two
        while not debug_socket.exists():
            assert proc.poll() is None, f"zpilot serve exited ({proc.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"zpilot serve not listening after 120 s:\n{log.read_text()}"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return log.read_text()


def test_serve_without_ca_dir_warns_that_a_restart_replaces_the_root(tmp_path):
    text = serve_startup_log(tmp_path, "--insecure-xds")  # authenticated ADS needs a CA on disk
    warning = [line for line in text.splitlines() if "WARNING" in line and "--ca-dir" in line]
    assert warning, text
    assert "restart" in warning[0] and "mTLS" in warning[0]


def test_serve_with_ca_dir_does_not_warn(tmp_path):
    text = serve_startup_log(tmp_path, "--ca-dir", str(tmp_path / "ca"))
    assert "--ca-dir" not in text, text


def test_an_oversized_ca_file_is_refused_naming_it_without_reading_it_whole(tmp_path):
    # A wrong path (a log, a dump) given as --ca-cert must not be read into memory whole.
    from zpilot.certs.storage import MAX_CA_FILE_BYTES

    CertificateAuthority.load_or_create(tmp_path / "ca")
    key = tmp_path / "ca" / ROOT_KEY_FILE
    big = tmp_path / "ca-cert.pem"
    with big.open("wb") as f:
        f.write((tmp_path / "ca" / ROOT_CERT_FILE).read_bytes())
        f.truncate(MAX_CA_FILE_BYTES + 1)
    with pytest.raises(CertificateAuthorityError, match=r"ca-cert\.pem: larger than"):
        CertificateAuthority.from_files(big, key)
