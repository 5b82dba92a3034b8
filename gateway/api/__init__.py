"""HTTP layer: thin blueprints around the pure X12 and translation code."""
