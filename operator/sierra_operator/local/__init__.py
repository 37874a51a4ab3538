"""``sierra-operator local``: a private Prefect server with process workers, the driver loop and
its progress display.
"""
