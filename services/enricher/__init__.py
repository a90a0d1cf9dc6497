"""The enricher: settles each job's final prompt (style templates) and hands it to the generator."""
