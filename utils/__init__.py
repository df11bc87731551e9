"""Library code shared by the root scripts (train, val, detect, export, benchmark)."""
import os

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # sparsezoo/deepsparse phone home unless told not to
