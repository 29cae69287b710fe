"""Test harnesses that deployments never import: in-memory links (``memlink``), a whole mesh in one
process (``memnet``), and sans-IO nodes joined by hand on a fake clock (``wire``). Only tests and
benchmarks import this package; a test checks that no other zmesh module does.
"""
