"""The CNI node agent: the node's and the ztunnel pod's redirection rules, computed and applied.

Data flows one way: the mesh model and a few facts discovered on the node go into a pure
:mod:`~zpilot.cni.plan`; :mod:`~zpilot.cni.reconcile` compares that plan with what the kernel
holds and changes only the difference, one concern per module (iptables, ipset, links, routing,
sysctls). See docs/cni.md for what the plan holds and why.
"""
