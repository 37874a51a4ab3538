"""``--execenv=sierraop.cluster``: SIERRA's stage 2 run by the sierra-operator in Kubernetes.

Stage 1 ran here; stage 2 pushes the batch's inputs to a PVC, creates a SierraBatch with
``commandsFile``, follows it until it ends, fetches ``exp-outputs/`` back, and fails (naming
the failed runs) if the batch failed; stages 3 and 4 then run here on complete outputs.
"""


def sierra_plugin_type() -> str:
    """SIERRA loads this directory as a pipeline plugin (an execution environment)."""
    return "pipeline"
