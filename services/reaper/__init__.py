"""The reaper: finds processing jobs whose worker went silent or hung, requeues them for another
attempt or fails them after the last one, and fails jobs whose messages were parked."""
