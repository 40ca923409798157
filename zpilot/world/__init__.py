"""A live ambient-mesh world in network namespaces: two nodes, their pods and ztunnels, real
Envoys fed by ``zpilot serve``, and the node rules of ``zpilot cni apply``.

Used by the end-to-end tests (tests/world), ``zpilot demo`` and the bench. Everything a world
creates is owned by one :class:`~zpilot.world.builder.World` and removed when it closes, also
after a failure or Ctrl-C. See docs/demo.md.
"""
