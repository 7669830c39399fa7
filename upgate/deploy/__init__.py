"""Deploy targets: where an approved candidate goes, each idempotent by deployment id."""
