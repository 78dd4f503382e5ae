"""Demo: the synthetic demo catalog (``catalog``) and the end-to-end demo run (``run``). A top layer,
beside reporting and the CLI: it may import every other layer. Layers, lowest first: core
(``moderation.config``, ``errors``, ``schemas``, ``modalities``, ``output``, ``faults``, ``redact``,
``security``, ``runs``/``runinfo``) < ``storage`` < ``classifiers`` < ``engines`` < ``policy`` <
``evaluation`` < ``scoring`` < ``reporting`` / ``demo`` / ``cli``; a module imports only from its
own layer and the layers below it.
"""
