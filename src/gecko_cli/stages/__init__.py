"""One module per stage: a pure core over records, then a thin command."""
