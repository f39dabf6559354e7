from e2urec.cli import app

app()
