"""Report: build report.json, write Markdown / HTML / terminal views, and the CI gate."""
