"""Producer side: dataset loading, prompt extraction and enqueueing of generation jobs."""
