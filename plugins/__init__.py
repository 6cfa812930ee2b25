"""The built-in plugins of rlhf-plugins, one subpackage each (``rlhf_builtins.ppo``, ...).

They are installed under this one import package (the source folder ``plugins/`` is mapped
onto it), so no third-party distribution can overwrite them with a top-level module of the
same name. They register through the ``rlhf_plugins`` entry-point group exactly like
third-party plugins; the core imports none of them.
"""
