"""Revoked node credentials: the list ``zpilot revoke`` writes into the CA's store and the ADS server reads.

A node credential (``xds_credentials``) is a certificate of the mesh CA; without this list a stolen one is
good until it expires. The list names credentials two ways:

* **by node**: every credential of node N issued before a time (``issued_before``). What an operator means
  by "revoke node N's credential": the copies an attacker took and the one the node holds now, whatever
  their serials. Re-bootstrapping the node afterwards (``zpilot bootstrap --renew --force``) issues one
  after that time, which is served again.
* **by serial**: one certificate (its serial, as ``zpilot serve`` logs it and Envoy's ``/certs`` prints it).

It is bounded: each entry carries ``until``, the time after which no credential it names can still be
valid (the longest lifetime credentials are issued with, counted from the revocation); an entry revokes for
as long as it is listed (a credential still valid past ``until`` was issued for longer than assumed, and is
refused still), expired entries are dropped when the list is next written, and a list may hold at most :data:`MAX_ENTRIES` live entries
in at most :data:`MAX_BYTES` (a revocation beyond that is refused, never an older one silently dropped).

Where it is kept: beside the CA, as :data:`REVOCATIONS_NAME` -- a file in the ``--ca-dir`` directory
(replaced atomically, under the directory's lock), or a key of the ``--ca-secret`` Secret. The format is
JSON, so an operator can read it::

    {"version": 1, "revoked": [
      {"node": "node-a", "issued_before": "2026-12-02T12:00:01Z", "until": "2027-01-01T12:00:01Z"},
      {"serial": "5f1e...", "until": "2027-01-01T12:00:01Z"}]}
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from zpilot import contract
from zpilot.certs.storage import CaDirectory, fsync_directory

#: The file in ``--ca-dir`` and the key of the ``--ca-secret`` Secret.
REVOCATIONS_NAME = "revoked-node-credentials.json"
FORMAT_VERSION = 1
#: Live entries a list may hold: one entry covers all of a node's credentials, so this is far beyond use.
MAX_ENTRIES = 1000
#: The most the list may take (file or Secret key): a Secret holds 1 MiB in all, the CA included.
MAX_BYTES = 256 * 1024
#: A serial is at most 20 bytes (RFC 5280): 40 hex digits.
_SERIAL = re.compile(r"^(?:[0-9a-f]{2}:?){1,20}$")


class RevocationError(ValueError):
    """A revocation list that cannot be read, or a revocation that cannot be recorded (names the source)."""


def parse_serial(text: str) -> int:
    """A certificate serial number given in hex (``5f1e...``, ``5F:1E:...``, ``0x5f1e``) as an integer."""
    value = text.strip().lower().removeprefix("0x")
    if len(value) % 2 and ":" not in value:
        value = "0" + value
    if not _SERIAL.fullmatch(value):
        raise RevocationError(f"{text[:100]!r} is not a certificate serial number (hex, at most 20 bytes)")
    return int(value.replace(":", ""), 16)


def _serial_hex(serial: int) -> str:
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


def _time(text: object, where: str) -> datetime:
    if not isinstance(text, str) or len(text) > 40:
        raise RevocationError(f"{where}: not a time")
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RevocationError(f"{where}: {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise RevocationError(f"{where}: {text!r} has no time zone")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # year 1 ahead of UTC, year 9999 behind it
        raise RevocationError(f"{where}: {text!r} is out of range") from None


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class RevokedNode:
    """Every credential of ``node`` issued before ``issued_before``."""

    node: str
    issued_before: datetime
    until: datetime

    def to_json(self) -> dict:
        return {"node": self.node, "issued_before": _iso(self.issued_before), "until": _iso(self.until)}


@dataclass(frozen=True)
class RevokedSerial:
    """The one certificate with this serial."""

    serial: int
    until: datetime

    def to_json(self) -> dict:
        return {"serial": _serial_hex(self.serial), "until": _iso(self.until)}


@dataclass(frozen=True)
class RevocationList:
    """The revoked node credentials; immutable (a new list replaces the old one whole)."""

    nodes: tuple[RevokedNode, ...] = ()
    serials: tuple[RevokedSerial, ...] = ()
    _by_serial: dict[int, RevokedSerial] = field(default_factory=dict, compare=False, repr=False)
    _by_node: dict[str, list[RevokedNode]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for entry in self.serials:
            self._by_serial[entry.serial] = entry
        for node in self.nodes:
            self._by_node.setdefault(node.node, []).append(node)

    def __len__(self) -> int:
        return len(self.nodes) + len(self.serials)

    def revokes(self, node: str, serial: int, issued_at: datetime) -> str | None:
        """Why the credential of ``node`` with ``serial``, issued at ``issued_at``, is revoked; None if it is not.

        An entry revokes for as long as it is listed, past its ``until`` too: a credential still valid then
        was issued for longer than the revocation assumed (``--credential-lifetime``), and the server must not
        let it back in on its own. Only the next ``zpilot revoke`` drops an entry, once its ``until`` passed."""
        if serial in self._by_serial:
            return f"serial {_serial_hex(serial)} is revoked"
        for entry in self._by_node.get(node, ()):
            if issued_at < entry.issued_before:
                return f"the credentials of node {node} issued before {_iso(entry.issued_before)} are revoked"
        return None

    def live(self, now: datetime) -> "RevocationList":
        """This list without the entries that can no longer name a valid credential."""
        return RevocationList(tuple(e for e in self.nodes if e.until > now), tuple(e for e in self.serials if e.until > now))

    def with_node(self, node: str, issued_before: datetime, until: datetime) -> "RevocationList":
        if not contract.valid_node_name(node):
            raise RevocationError(f"{node[:300]!r} is not a Kubernetes node name")
        # an earlier entry of the node that this one covers (cut no later, kept no longer) goes
        kept = tuple(e for e in self.nodes if not (e.node == node and e.issued_before <= issued_before and e.until <= until))
        return RevocationList((*kept, RevokedNode(node, issued_before, until)), self.serials)

    def with_serial(self, serial: int, until: datetime) -> "RevocationList":
        kept = tuple(e for e in self.serials if e.serial != serial)
        return RevocationList(self.nodes, (*kept, RevokedSerial(serial, until)))

    def to_bytes(self) -> bytes:
        """The stored form; RevocationError if it exceeds the bounds."""
        if len(self) > MAX_ENTRIES:
            raise RevocationError(f"the revocation list would hold {len(self)} unexpired entries; at most {MAX_ENTRIES}")
        document = {"version": FORMAT_VERSION,
                    "revoked": [e.to_json() for e in self.nodes] + [e.to_json() for e in self.serials]}
        data = (json.dumps(document, indent=1) + "\n").encode()
        if len(data) > MAX_BYTES:
            raise RevocationError(f"the revocation list would take {len(data)} bytes; at most {MAX_BYTES}")
        return data

    @classmethod
    def parse(cls, data: bytes, source: str) -> "RevocationList":
        """The list in ``data``; RevocationError naming ``source`` and the entry for anything it cannot read."""
        if len(data) > MAX_BYTES:
            raise RevocationError(f"{source}: larger than {MAX_BYTES} bytes")
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RevocationError(f"{source}: not JSON ({str(exc)[:200]})") from None
        except RecursionError:  # arrays nested deeper than Python's stack: would end the poll's task unlogged
            raise RevocationError(f"{source}: not a revocation list (JSON nested too deep)") from None
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
            raise RevocationError(f"{source}: not a revocation list of version {FORMAT_VERSION}")
        entries = document.get("revoked", [])
        if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
            raise RevocationError(f"{source}: 'revoked' must be a list of at most {MAX_ENTRIES} entries")
        nodes: list[RevokedNode] = []
        serials: list[RevokedSerial] = []
        for i, entry in enumerate(entries):
            where = f"{source} entry {i}"
            if not isinstance(entry, dict):
                raise RevocationError(f"{where}: not an object")
            until = _time(entry.get("until"), f"{where} until")
            if "serial" in entry:
                if not isinstance(entry["serial"], str):
                    raise RevocationError(f"{where}: serial is not a string")
                try:
                    serials.append(RevokedSerial(parse_serial(entry["serial"]), until))
                except RevocationError as exc:
                    raise RevocationError(f"{where}: {exc}") from None
            elif "node" in entry:
                node = entry["node"]
                if not isinstance(node, str) or not contract.valid_node_name(node):
                    raise RevocationError(f"{where}: node is not a Kubernetes node name")
                nodes.append(RevokedNode(node, _time(entry.get("issued_before"), f"{where} issued_before"), until))
            else:
                raise RevocationError(f"{where}: names neither a node nor a serial")
        return cls(tuple(nodes), tuple(serials))


EMPTY = RevocationList()


def revoke_node(current: RevocationList, node: str, now: datetime, keep: timedelta) -> RevocationList:
    """``current`` plus node's credentials issued up to ``now``, pruned. The cut is the next whole second
    after ``now``: certificates carry whole seconds, so one issued in ``now``'s second counts as before it
    (:func:`wait_past` makes sure a credential issued afterwards is not)."""
    cut = cut_after(now)
    return current.live(now).with_node(node, cut, cut + keep)


def revoke_serial(current: RevocationList, serial: int, now: datetime, keep: timedelta) -> RevocationList:
    return current.live(now).with_serial(serial, now + keep)


def cut_after(now: datetime) -> datetime:
    """The whole second after ``now``."""
    return now.replace(microsecond=0) + timedelta(seconds=1)


# -- the --ca-dir store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStamp:
    """What tells a changed file from an unchanged one without reading it (the poll's one syscall)."""

    inode: int
    size: int
    mtime_ns: int


def file_stamp(ca_dir: Path) -> FileStamp | None:
    """The list file's stamp, None if it does not exist."""
    try:
        st = os.stat(ca_dir / REVOCATIONS_NAME)
    except FileNotFoundError:
        return None
    return FileStamp(st.st_ino, st.st_size, st.st_mtime_ns)


def read_directory(ca_dir: Path) -> RevocationList:
    """The list in the CA directory (empty if there is none); RevocationError if it cannot be read."""
    path = ca_dir / REVOCATIONS_NAME
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return EMPTY
    except OSError as exc:
        raise RevocationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return RevocationList.parse(data, str(path))


def update_directory(ca_dir: Path, change: Callable[[RevocationList], RevocationList]) -> RevocationList:
    """Replace the directory's list by ``change(current)``: under the CA directory's lock (two revocations at
    once both land), written to a temporary file, fsynced and renamed into place (a reader sees the old list
    or the new one, whole). Returns the list written."""
    directory = CaDirectory(ca_dir)
    if not directory.is_complete():
        raise RevocationError(f"{ca_dir}: not a CA directory (no {directory.cert.name} and {directory.key.name})")
    staged = ca_dir / f".{REVOCATIONS_NAME}.tmp"
    try:
        with directory.locked():
            updated = change(read_directory(ca_dir))
            data = updated.to_bytes()
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(staged, ca_dir / REVOCATIONS_NAME)
            fsync_directory(ca_dir)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise RevocationError(f"{ca_dir}: cannot write {REVOCATIONS_NAME} ({exc.strerror or exc})") from None
    return updated
