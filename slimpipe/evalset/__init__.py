"""One evaluation set for every run drawn from the same sources (``slimpipe evalset``), and the
decontamination of training splits against it."""
