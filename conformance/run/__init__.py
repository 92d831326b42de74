"""The run: its plan, its session, its selection, its verdicts and the judge."""
