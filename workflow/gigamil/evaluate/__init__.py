"""Cross-validation aggregation, metrics, fold-model ensembles and attention localisation."""
