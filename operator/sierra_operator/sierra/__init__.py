"""SIERRA integration: the execenv plugin directory SIERRA loads and the stage-2 logic it calls."""
