"""WOSAC-style realism of traffic models against real logs (see `jaxloop.realism.evaluate`)."""
