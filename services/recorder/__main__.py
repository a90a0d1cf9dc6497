from services.recorder.main import run

run()
