"""jaxloop.policy."""
