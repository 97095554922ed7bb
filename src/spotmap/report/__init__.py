"""The MultiQC report: custom-content writers (:mod:`.mqc`), shared plots (:mod:`.plots`)."""
