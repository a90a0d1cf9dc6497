from services.generator.main import run

run()
