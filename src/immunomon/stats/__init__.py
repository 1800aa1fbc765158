"""Trial statistics over tidy tables: change from baseline, DA/DS, clinical and safety."""
