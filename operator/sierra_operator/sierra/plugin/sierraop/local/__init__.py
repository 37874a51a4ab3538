"""``--execenv=sierraop.local``: SIERRA's stage 2 run by sierra-operator's local mode.

A drop-in for ``prefectserver.local``: a private Prefect server on a free port (or
``--prefect-api-url``), experiments one after another, at most ``--exec-jobs-per-node`` runs
of one experiment at a time, ``--exec-resume`` re-runs only what has not succeeded, a failed
run fails stage 2 naming it, Ctrl-C stops everything it started.
"""


def sierra_plugin_type() -> str:
    """SIERRA loads this directory as a pipeline plugin (an execution environment)."""
    return "pipeline"
