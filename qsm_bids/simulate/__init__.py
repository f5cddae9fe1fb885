"""Digital brain cohort simulator with known susceptibility."""
