"""The machinery around the book: the `diffgen` command (cli), headless execution of a chapter (runner) and of the
book (bookrun), the Sphinx extension (book), the report of the claims and sweeps over parameters. The top floor:
imports from every folder; nothing imports it."""
