"""Ray Tune search over constraint and loss settings (space, trial, sweep, report); ray is imported lazily."""

