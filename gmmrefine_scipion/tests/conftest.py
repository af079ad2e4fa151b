"""pytest only (``scipion3 tests`` does not read it): the Scipion chains run on the CPU unless
CUDA_VISIBLE_DEVICES is set.  The headless Scipion environment comes from the repository's
root ``conftest.py``, loaded before this package (and pyworkflow) is imported."""
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
