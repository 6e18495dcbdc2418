"""The paper's claims and our rows: results files (results), the verdict of each row (verdicts, gates), the prose
that states a measured result (prose, rowtext), a chapter's conclusions and the claims' figure. Imports from the
folders below, chapters included."""
