"""The running processes' wiring: sources, producer, cache, CA rotation and reload, servers.

``control_plane.py`` wires one control plane (cache, producer, ADS server, debug API); ``serve.py``
is the ``zpilot serve`` process around it (model source -> updates, start-up order, signals).
The commands only parse arguments; the tests start exactly these.
"""
