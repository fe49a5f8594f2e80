"""jaxloop.interop."""
