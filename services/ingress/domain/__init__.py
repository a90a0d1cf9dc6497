"""The ingress's domain, free of HTTP: commands and queries as plain async functions over narrow
dependencies (the bus link, the job files, keys and limits, the catalog and settings, the read
side), raising `errors.DomainError`s. The REST routes (`services.ingress.routes`) and any foreign
dialect call these same functions and only translate requests, answers and errors.

- `jobs`: submit, cancel, read, preview, list
- `images`: image files and metadata, delete, gallery
- `queue`: statistics, quota, reset stalled jobs
- `catalog`: models, samplers, prompt styles
- `ops`: health, metrics, the projection's admin queries
- `files`: every job-file read and write the ingress makes; `links`: the bus, once connected
"""
