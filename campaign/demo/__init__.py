"""`campaign demo`: the shipped story, end to end, in simulated time."""
