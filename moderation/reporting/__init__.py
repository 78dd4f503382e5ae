"""Reporting layer (analyst-facing): the Spark report (``report``), its charts, the offline query paths
(``query``) and the data dictionary. It may import every layer below it, the Spark adapter included
(``moderation.engines.spark``). Layers, lowest first: core (``moderation.config``, ``errors``,
``schemas``, ``modalities``, ``output``, ``faults``, ``redact``, ``security``, ``runs``/``runinfo``)
< ``storage`` < ``classifiers`` < ``engines`` < ``policy`` < ``evaluation`` < ``scoring`` <
``reporting`` / ``demo`` / ``cli``; a module imports only from its own layer and the layers below
it.
"""
