"""The version of the jaxloop package (saved in caches and exported artefacts)."""

__version__ = "0.1.0"
