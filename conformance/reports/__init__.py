"""Reports: the failure report as data, and the JSON and HTML documents of a run."""
