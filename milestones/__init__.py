"""Gates: `make phaseN` and `make milestoneN` run acceptance criteria live and block on failure."""
