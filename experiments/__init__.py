"""The experiment and benchmark scripts; `experiments.common` holds what they share."""
