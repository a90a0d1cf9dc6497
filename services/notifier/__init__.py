"""The notifier: POSTs a job's document to its webhook for the events it asked for, signed per the
Standard Webhooks spec, retried with backoff through the broker, parked when every try failed."""
