"""Quality checks, drift, evaluation against labelled data, plots and exports."""
