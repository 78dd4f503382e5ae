"""Storage layer: the lake (the only writer of Delta tables), the run lease, the catalog reader, media
reads, model artifacts, the local spill and the PDQ hash bank. It may import only the core modules.
Layers, lowest first: core (``moderation.config``, ``errors``, ``schemas``, ``modalities``,
``output``, ``faults``, ``redact``, ``security``, ``runs``/``runinfo``) < ``storage`` <
``classifiers`` < ``engines`` < ``policy`` < ``evaluation`` < ``scoring`` < ``reporting`` / ``demo``
/ ``cli``; a module imports only from its own layer and the layers below it.
"""
