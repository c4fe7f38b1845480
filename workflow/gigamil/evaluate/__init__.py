"""Cross-validation splits, metrics, ensembles and attention localisation."""
