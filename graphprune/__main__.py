from graphprune.cli import run

run()
