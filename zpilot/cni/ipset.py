"""The set of meshed pods (``contract.IPSET_NAME``): one entry per meshed pod on the node, commented with the pod's UID.

Entries are added and removed one by one through ``ipset restore``, so a pod coming or going
touches only its own entry and the iptables rule that matches the set never changes. A set of
the wrong kind (say, made without comment support) is replaced through ``ipset swap``, which
works even while iptables references the set.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ..logs import counted
from .changes import Change, Diff
from .netns import CommandError, Netns
from .desired import IpsetEntry, IpsetPlan


@dataclass
class IpsetState:
    exists: bool
    header: str = ""  # the "create" line's options, e.g. "hash:ip family inet ... comment"
    entries: dict[str, str] = field(default_factory=dict)  # ip -> comment

    @property
    def type(self) -> str:
        return self.header.split()[0] if self.header else ""

    @property
    def has_comments(self) -> bool:
        return " comment" in f" {self.header} "


def parse_save(name: str, text: str) -> IpsetState:
    state = IpsetState(exists=False)
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) >= 3 and words[0] == "create" and words[1] == name:
            state.exists = True
            state.header = " ".join(words[2:])
        elif len(words) >= 3 and words[0] == "add" and words[1] == name:
            comment = words[words.index("comment") + 1] if "comment" in words[3:] else ""
            state.entries[words[2]] = comment
    return state


def read(netns: Netns, name: str) -> IpsetState:
    proc = netns.run(["ipset", "list", name, "-o", "save"], check=False)
    if proc.returncode != 0:
        if "does not exist" in proc.stderr:
            return IpsetState(exists=False)
        raise CommandError(f"`ipset list {name}` failed in {netns}: {proc.stderr.strip()}")
    return parse_save(name, proc.stdout)


@dataclass
class IpsetScript:
    """What ``apply`` runs: ``ipset restore`` lines, and whether the set is to go."""

    script: list[str] = field(default_factory=list)
    destroy: bool = False  # done last, once no iptables rule references the set


def _add(name: str, entry: IpsetEntry) -> str:
    # the plan keeps comments to characters that need no escaping (plan.ipset_comment)
    return f'add {name} {entry.ip} comment "{entry.comment}"'


def diff(name: str, desired: IpsetPlan | None, actual: IpsetState) -> Diff[IpsetScript]:
    """Entries already in the set with the right comment count as unchanged."""
    d = Diff(IpsetScript())
    script = d.work.script
    if desired is None:
        if actual.exists:
            d.work.destroy = True
            entries = counted(len(actual.entries), "entry", "entries")
            d.changes.append(Change("ipset", "remove", f"set {name} ({entries})"))
        return d
    wanted = {e.ip: e for e in desired.entries}
    create = f"create {name} {desired.type} comment"
    if not actual.exists:
        script.append(create)
        script += [_add(name, e) for e in desired.entries]
        d.changes.append(Change("ipset", "add", f"set {name} {desired.type}"))
        d.changes += [Change("ipset", "add", f"{name} {e.ip} (pod uid {e.comment})") for e in desired.entries]
        return d
    if actual.type != desired.type or not actual.has_comments:
        tmp = f"{name}-new"[:31]
        script += [f"create {tmp} {desired.type} comment"] + [_add(tmp, e) for e in desired.entries]
        script += [f"swap {tmp} {name}", f"destroy {tmp}"]
        d.changes.append(Change("ipset", "update", f"set {name}: was {actual.header!r}, replaced by swap"))
        return d
    for ip, comment in actual.entries.items():
        entry = wanted.get(ip)
        if entry is None:
            script.append(f"del {name} {ip}")
            d.changes.append(Change("ipset", "remove", f"{name} {ip} (pod uid {comment or '?'})"))
        elif entry.comment != comment:
            script += [f"del {name} {ip}", _add(name, entry)]
            d.changes.append(Change("ipset", "update", f"{name} {ip}: pod uid {comment} -> {entry.comment}"))
        else:
            d.unchanged += 1
    for ip, entry in wanted.items():
        if ip not in actual.entries:
            script.append(_add(name, entry))
            d.changes.append(Change("ipset", "add", f"{name} {ip} (pod uid {entry.comment})"))
    return d


def apply(netns: Netns, name: str, d: Diff[IpsetScript]) -> None:
    """Entries and swaps; destroying the set is :func:`destroy`'s, once iptables no longer uses it."""
    script = d.work.script
    if script:
        if any(line.startswith("swap ") for line in script):
            netns.run(["ipset", "destroy", f"{name}-new"[:31]], check=False)  # left by an interrupted swap
        netns.run(["ipset", "restore"], input="\n".join(script) + "\n")


def destroy(netns: Netns, name: str) -> None:
    netns.run(["ipset", "destroy", name])
