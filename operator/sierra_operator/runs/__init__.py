"""Running a batch's runs on Prefect: the experiment flow, the durable per-run ledger under sierra-
root, and the Prefect API adapter.
"""
