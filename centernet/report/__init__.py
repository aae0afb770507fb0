"""What a run reports: the metrics table, the evaluation's files, plots and annotated pictures."""
