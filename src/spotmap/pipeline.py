"""Deprecated: the one-machine workflow is :mod:`spotmap.workflow`; this name stays for existing imports."""

from spotmap.workflow import MAPPING_MODES, RunParams, resolve_mapping_mode, run_pipeline, write_params  # noqa: F401
