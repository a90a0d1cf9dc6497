from services.ingress.main import run

run()
