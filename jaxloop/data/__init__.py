"""Scenarios in (real logs, procedural generator), `Scenario` pytrees out."""
