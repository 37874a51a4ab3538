"""SIERRA project ``sotest.tinyproj``: one batch criterion (the robots' speed) on tinysim."""


def sierra_plugin_type() -> str:
    """SIERRA loads this directory as a project."""
    return "project"
