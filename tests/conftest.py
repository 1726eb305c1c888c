"""Shared pytest set-up: make the in-repo collection importable as ansible_collections.qemulab.network."""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO_ROOT, ".build", "collections")

if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
