import os
import sys

# Let test modules share helpers (e.g. `from attack_test import mlp_models`).
sys.path.insert(0, os.path.dirname(__file__))
