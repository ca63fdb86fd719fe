"""The GPU proxy-tuning engine (torch; imported only when a GPU backend is configured).

Nothing in this package imports torch at module level except the modules that exist
only to run on the device (``llama``, ``sampling``, ``engine``, ``reference``); ``client``,
``scheduler`` and the server configuration import them lazily, so a machine without torch
never loads it.
"""
