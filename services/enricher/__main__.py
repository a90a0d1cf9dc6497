from services.enricher.main import run

run()
