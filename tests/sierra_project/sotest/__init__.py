"""SIERRA plugins of the tests: engine ``sotest.tinysim`` and project ``sotest.tinyproj``."""
