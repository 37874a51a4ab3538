"""SIERRA engine ``sotest.tinysim``: a stand-in for a real simulator (jsonsim-like)."""


def sierra_plugin_type() -> str:
    """SIERRA loads this directory as a pipeline plugin (an engine)."""
    return "pipeline"
