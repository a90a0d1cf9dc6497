from services.reaper.main import run

run()
