"""jaxloop.viz."""
