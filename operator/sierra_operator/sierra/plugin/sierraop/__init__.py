"""sierra-operator's SIERRA execution environments (``sierraop.*``): a name that clashes with
none of SIERRA's own plugins (hpc, prefectserver, robot)."""
