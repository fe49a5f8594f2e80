"""The simulator: pure functions over pytrees, one scenario at a time. Imports nothing else of jaxloop."""
