"""Redis and RQ: connections, key names, queues, the job class that runs only rsample's functions, the long-lived worker
process, its supervisor, failure handling, an embedded Redis, and the run's state and status."""
