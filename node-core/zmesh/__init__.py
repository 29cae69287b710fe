"""zmesh: a pure-Python, sans-IO onion-routing overlay core (runs on CPython and Pyodide)."""

__version__ = "0.1.0"
