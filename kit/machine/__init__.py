"""The machine and the model: the catalogue of methods, architectures and GPUs (arch), the device
and its dtype policy (device), loading models (models), bitsandbytes checked on this CPU (bnb_check),
the memory ledger and estimator (memory), memory across GPUs (scaling). Knows nothing of training.
"""
