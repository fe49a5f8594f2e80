"""jaxloop.io."""
