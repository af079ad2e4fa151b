"""The plugin's pytest-only tests (headless Scipion from the root ``conftest.py``): on the CPU
unless CUDA_VISIBLE_DEVICES is set, and ``import gmm_fakes`` finds the fakes beside them."""
import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
