"""YAML job specs validated at the edge into typed, frozen configs."""
