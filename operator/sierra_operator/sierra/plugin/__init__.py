"""SIERRA plugins shipped with sierra-operator: this directory goes on SIERRA_PLUGIN_PATH
(`sierra-operator sierra-plugin-path` prints it). SIERRA names a plugin after its parent
directory and its own, so ``sierraop/local`` is ``--execenv=sierraop.local``."""
