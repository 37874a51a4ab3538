"""The pure core: the batch model, the experiment/run plan and the state machine (spec +
observations -> actions + status). Imports no adapter, Prefect, kopf or Kubernetes client.
"""
