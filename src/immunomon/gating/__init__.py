"""Gates, gating hierarchies, Gating-ML/FlowJo import, templates and population statistics."""
