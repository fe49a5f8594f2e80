"""jaxloop.eval."""
