"""The CNI node agent: the node's and the ztunnel pod's redirection rules, computed and applied.

Data flows one way: the mesh model and a few facts about the node (discovered by the agent, or
given as arguments) go into the pure :mod:`~zpilot.cni.plan` builders, which fill the desired
state of :mod:`~zpilot.cni.desired`; :mod:`~zpilot.cni.reconcile` compares it with what the
kernel holds and changes only the difference, one concern per module (iptables, ipset, links,
routing, sysctls), each answering with the same :class:`~zpilot.cni.changes.Diff`. The numbers
and names shared with the ztunnel's config are :mod:`zpilot.contract`'s. See docs/cni.md.
"""
