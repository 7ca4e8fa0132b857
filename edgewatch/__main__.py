from edgewatch.cli import app

app(prog_name="edgewatch")
