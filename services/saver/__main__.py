from services.saver.main import run

run()
