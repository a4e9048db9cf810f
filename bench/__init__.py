"""ckpt-eval's own benchmark harness (``make bench``; ``python -m bench --help``).

It builds everything it measures from scratch: fashion_cnn checkpoints, an IDX dataset, its own
PostgreSQL cluster with init.sql applied and vault-encrypted credentials. Then it runs the real
``ckpt-eval run`` CLI, the floor (the same forward passes in one warm process) and the design
ckpt-eval replaced (one Python process per checkpoint) interleaved, A B C A B C, and reports
medians and ratios. Timing goals are printed next to the figures, never asserted: tests only run
the harness in its smoke mode so that it cannot rot.
"""
