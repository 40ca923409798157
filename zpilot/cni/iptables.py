"""iptables: our ``ztunnel-*`` chains and their jumps, changed atomically per table.

Only chains named ``ztunnel-*`` in mangle and nat, and the rules that jump to them, are ever
written. Each table that differs gets one ``iptables-restore --noflush`` transaction, so a
table is either fully old or fully new; a chain whose rules already match is not rewritten, so
its counters keep counting. The backend (legacy or nf_tables) is chosen as the 2022 agent and
Kubernetes' iptables-wrapper did: whichever already holds more rules, since mixing them on one
node makes both sets of rules half-effective.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field

from ..logs import counted
from .changes import Change, Diff
from .netns import CniError, Netns
from .desired import IptablesChain, Jump, NetnsPlan

_TARGET = re.compile(r"(?:^|\s)-[jg] (\S+)")


@dataclass(frozen=True)
class Backend:
    name: str  # legacy | nft | default
    save: str
    restore: str


DEFAULT_BACKEND = Backend("default", "iptables-save", "iptables-restore")
BACKENDS = {
    "legacy": Backend("legacy", "iptables-legacy-save", "iptables-legacy-restore"),
    "nft": Backend("nft", "iptables-nft-save", "iptables-nft-restore"),
}


def _count_rules(netns: Netns, save: str) -> int:
    proc = netns.run([save], check=False)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("-A ")) if proc.returncode == 0 else -1


def detect_backend(netns: Netns, forced: str = "auto") -> Backend:
    """Pick legacy or nft by which already has rules (ties go to nft, the modern default)."""
    if forced in BACKENDS:
        backend = BACKENDS[forced]
        if not shutil.which(backend.restore):
            raise CniError(f"--iptables {forced} asked for, but {backend.restore} is not installed")
        return backend
    if not all(shutil.which(b.save) and shutil.which(b.restore) for b in BACKENDS.values()):
        if not shutil.which("iptables-restore"):
            raise CniError("iptables-restore is not installed (package iptables)")
        return DEFAULT_BACKEND
    legacy = _count_rules(netns, BACKENDS["legacy"].save)
    nft = _count_rules(netns, BACKENDS["nft"].save)
    return BACKENDS["legacy"] if legacy > nft else BACKENDS["nft"]


@dataclass
class TableState:
    """One table as ``iptables-save`` shows it: rules per chain, in order."""

    chains: dict[str, list[str]] = field(default_factory=dict)


def parse_save(text: str) -> dict[str, TableState]:
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), TableState())
        elif current is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            current.chains.setdefault(chain, []).append(spec.strip())
    return tables


def read_tables(netns: Netns, backend: Backend, tables: tuple[str, ...]) -> dict[str, TableState]:
    result: dict[str, TableState] = {}
    for table in tables:
        text = netns.run([backend.save, "-t", table]).stdout
        result[table] = parse_save(text).get(table, TableState())
    return result


@dataclass
class TableScript:
    """One table's ``iptables-restore --noflush`` transaction."""

    declare: list[str] = field(default_factory=list)  # chains to create or flush and refill
    delete_rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, spec)
    append: list[tuple[str, str]] = field(default_factory=list)
    insert_first: list[tuple[str, str]] = field(default_factory=list)
    remove_chains: list[str] = field(default_factory=list)

    def script(self, table: str) -> str:
        lines = [f"*{table}"]
        lines += [f":{name} - [0:0]" for name in self.declare]
        lines += [f"-D {chain} {spec}" for chain, spec in self.delete_rules]
        lines += [f"-A {chain} {spec}" for chain, spec in self.append]
        lines += [f"-I {chain} 1 {spec}" for chain, spec in self.insert_first]
        for name in self.remove_chains:
            lines += [f"-F {name}", f"-X {name}"]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _target(spec: str) -> str | None:
    m = _TARGET.search(spec)
    return m.group(1) if m else None


def diff_table(
    table: str, desired: list[IptablesChain], jumps: list[Jump], actual: TableState, prefix: str
) -> Diff[TableScript]:
    """Chains whose rules match, and jumps already first and alone, count as unchanged."""
    d: Diff[TableScript] = Diff(TableScript())
    s = d.work
    wanted = {ch.name: ch for ch in desired}
    owned_actual = {name for name in actual.chains if name.startswith(prefix)}
    for name, chain in wanted.items():
        have = actual.chains.get(name)
        if have is None:
            s.declare.append(name)
            s.append += [(name, r) for r in chain.rules]
            d.changes.append(Change("iptables", "add", f"{table} chain {name} ({counted(len(chain.rules), 'rule')})"))
        elif have != list(chain.rules):
            s.declare.append(name)
            s.append += [(name, r) for r in chain.rules]
            gone = [r for r in have if r not in chain.rules]
            new = [r for r in chain.rules if r not in have]
            detail = "; ".join([f"-{r}" for r in gone] + [f"+{r}" for r in new]) or "rule order"
            d.changes.append(Change("iptables", "update", f"{table} chain {name}: {detail}"))
        else:
            d.unchanged += 1
    removed = sorted(owned_actual - set(wanted))
    wanted_jumps = {(j.hook, j.target): j for j in jumps}
    for chain_name, rules in actual.chains.items():
        if chain_name.startswith(prefix):
            continue  # our own chains are flushed or rewritten whole
        for position, spec in enumerate(rules):
            target = _target(spec)
            if target is None or not target.startswith(prefix):
                continue
            jump = wanted_jumps.get((chain_name, target))
            if jump is not None and position == 0 and spec == jump.spec and rules.count(spec) == 1:
                continue
            s.delete_rules.append((chain_name, spec))
            if jump is None or spec != jump.spec:  # (the jump itself is re-inserted below)
                d.changes.append(Change("iptables", "remove", f"{table} {chain_name}: {spec}"))
    for (hook, target), jump in wanted_jumps.items():
        rules = actual.chains.get(hook, [])
        if rules[:1] == [jump.spec] and rules.count(jump.spec) == 1:
            d.unchanged += 1
            continue
        s.insert_first.append((hook, jump.spec))
        if jump.spec in rules:
            d.changes.append(Change("iptables", "update", f"{table} {hook}: -j {target} (make it the first rule)"))
        else:
            d.changes.append(Change("iptables", "add", f"{table} {hook}: -j {target}"))
    for name in removed:
        s.remove_chains.append(name)
        d.changes.append(Change("iptables", "remove", f"{table} chain {name}"))
    return d


def diff(plan: NetnsPlan, actual: dict[str, TableState]) -> Diff[dict[str, TableScript]]:
    """Every owned table; only those that differ get a transaction."""
    result: Diff[dict[str, TableScript]] = Diff({})
    for table in plan.ownership.iptables_tables:
        d = diff_table(
            table,
            [ch for ch in plan.chains if ch.table == table],
            [j for j in plan.jumps if j.table == table],
            actual.get(table, TableState()),
            plan.ownership.chain_prefix,
        )
        result.unchanged += d.unchanged
        if d.changes:
            result.work[table] = d.work
            result.changes += d.changes
    return result


def apply(netns: Netns, backend: Backend, d: Diff[dict[str, TableScript]]) -> None:
    """One ``iptables-restore --noflush`` per table: all of a table's changes land, or none do."""
    for table, script in d.work.items():
        netns.run([backend.restore, "--noflush", "-w", "5"], input=script.script(table))
