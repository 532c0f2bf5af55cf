from daguerre.cli import app

app(prog_name="daguerre")
