"""zpilot: a control plane for Envoy-based ztunnels on stock Envoy."""

__version__ = "0.1.0"
