"""Policy layer: ``decide`` (scores -> violations), ``diff`` (what a new policy version changes),
``lifecycle`` (draft/live/retired) and ``enforcement`` (the export of the live version). It may
import core, storage, classifiers and engines. Layers, lowest first: core (``moderation.config``,
``errors``, ``schemas``, ``modalities``, ``output``, ``faults``, ``redact``, ``security``,
``runs``/``runinfo``) < ``storage`` < ``classifiers`` < ``engines`` < ``policy`` < ``evaluation`` <
``scoring`` < ``reporting`` / ``demo`` / ``cli``; a module imports only from its own layer and the
layers below it.
"""
