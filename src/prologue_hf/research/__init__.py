"""Applications built on the library: the embedded end-to-end run behind ``make demo`` (:mod:`.demo`), the CPU
mini-replication sweep (:mod:`.replication`), the analysis figures (:mod:`.analysis`) and the
``--pipeline`` / ``--tokenizer`` + ``--ar`` flags of the example scripts (:mod:`.cli`).

Nothing in the library imports this package; it sits one layer above it, beside the scripts in ``examples/``.
Import the modules themselves (``from prologue_hf.research.demo import run_demo``): this file imports nothing, so
``import prologue_hf.research`` pulls in no training code.
"""
