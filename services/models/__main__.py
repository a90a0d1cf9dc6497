from services.models.main import run

run()
