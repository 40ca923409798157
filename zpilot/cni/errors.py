"""The one exception type the CNI agent raises for things an operator must act on."""


class CniError(RuntimeError):
    """A failure the operator has to act on; the message names the namespace, tool or object."""
