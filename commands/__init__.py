"""The command floor: the command modules of both programs, ``qtm`` and ``chain``.

Each command lives in its own module (``qtm_<name>.py``, ``chain_<name>.py``) and only parses options, calls
the libraries below (:mod:`qtm`, :mod:`chain`, :mod:`validate`) and draws progress; ``qtm_program`` and
``chain_program`` register them. :mod:`commands.common` holds the one error path of both programs and
:mod:`commands.options` the options derived from the parameter model. Nothing below this floor imports it, and
the ``qtm`` program's modules need neither ``chain`` nor ``validate`` (it runs without the chain extra).
"""
