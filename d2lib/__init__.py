"""d2lib — the companion library of D²VLM Lab.

One module per concept; each docstring names the lesson that teaches it.
"""
__version__ = "0.1.0"
