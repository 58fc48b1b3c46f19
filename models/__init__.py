"""The schema ihub keeps its state in, and the queries the tasks, the CLI and the page share."""
