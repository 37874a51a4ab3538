"""Reading what users write: the batch YAML (a strict, bounded YAML loader) and SIERRA's commands
files.
"""
