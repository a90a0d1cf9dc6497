from services.notifier.main import run

run()
