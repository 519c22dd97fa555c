"""The `mmrag` command's entry (the console script and `python -m mmrag`).

The cyclic garbage collector is paused from the first import on: start-up creates several hundred thousand
objects that live as long as the process (the CLI's, pydantic's and SQLAlchemy's modules and classes), and
the collector would scan them over and over while they are created, and once more at exit (0.2 s of the
0.8 s `mmrag --help` took, 0.6 s of the 1.8 s a full-way `mmrag stats` took). The CLI resumes it, with
those objects frozen out of its sight (`gc.freeze`), before a command's own work
(`mmrag.cli.start_up_done`); a command that ends before that exits with it paused.
"""

import atexit
import gc


def main() -> None:
    gc.disable()
    atexit.register(gc.freeze)  # last handler to run: the final collection skips what exit frees anyway
    from mmrag.cli import run

    run()


if __name__ == "__main__":
    main()
