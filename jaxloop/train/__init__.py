"""jaxloop.train."""
