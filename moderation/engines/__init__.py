"""Engine adapters: Ray Data (``ray``: one job per modality of a run) and Spark (``spark``: sessions,
schemas, exact snapshot reads). Thin layers over the pure stages; they may import core, storage and
classifiers, never policy, scoring or reporting. ``ray`` and ``pyspark`` are imported inside the
functions that use them (``import ray`` here is the Ray package: imports are absolute). Layers,
lowest first: core (``moderation.config``, ``errors``, ``schemas``, ``modalities``, ``output``,
``faults``, ``redact``, ``security``, ``runs``/``runinfo``) < ``storage`` < ``classifiers`` <
``engines`` < ``policy`` < ``evaluation`` < ``scoring`` < ``reporting`` / ``demo`` / ``cli``; a
module imports only from its own layer and the layers below it.
"""
