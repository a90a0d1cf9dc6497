"""The recorder: appends every event to the event log, keeps one document per job, and keeps
queue.txt listing the jobs that are pending or processing."""
