from mmrag.cli import run

run()
